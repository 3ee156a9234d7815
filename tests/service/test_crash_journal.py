"""Crash safety with the journal: SIGKILL at every point of a change and of a fold, a journal cut
mid-record, and ENOSPC, read-only and EIO during a journal write or a fold.

The real ``embedd`` CLI with the real default model, journalling whatever the store's size
(``EMBEDD_JOURNAL_ABOVE_BYTES=0``). What a reader sees is the JSON file with the journal
replayed over it (``Store.open_readonly``, the loader of ``search``, ``status`` and ``export``);
the JSON file alone must stay a valid store of whole file versions at every instant, and be
current after a clean stop. ``EMBEDD_CRASH_SEED`` and ``EMBEDD_JOURNAL_KILLS`` (default 60)
work as in test_crash.py.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import Daemon, read_store, wait_for
from test_crash import STORE, Corpus, Mounted, check_store, failing_store, wait_converged, write_crash_config

from daemon.errors import StoreError
from daemon.store.journal import MAGIC, journal_path
from daemon.store.store import Store

__all__ = ["failing_store"]  # the fixture, shared with test_crash.py


def check_store_files(doc: dict[str, Any]) -> list[str]:
    """The reader's view holds every file once, with no duplicate entry."""
    want = {f"inbox/doc{i}.txt" for i in range(3)} | {"inbox/late.txt"}
    ids = [e["id"] for e in doc["embeddings"]]
    return [
        *([f"files {sorted(doc['files'])}"] if set(doc["files"]) != want else []),
        *(["duplicate ids"] if len(ids) != len(set(ids)) else []),
    ]


def journal_env(cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "EMBEDD_JOURNAL_ABOVE_BYTES": "0"}


def reader_doc(path: Path) -> dict[str, Any] | None:
    """The store as a reader sees it (JSON + journal), in the shape of the JSON document."""
    try:
        with capture_logs(), Store.open_readonly(path) as store:
            assert store.fingerprint is not None
            return {
                "version": "1.0",
                "model": store.model,
                "dimensions": store.dimensions,
                "count": store.count,
                "fingerprint": store.fingerprint.to_json(),
                "files": {
                    s: st.to_json() for s in store.sources() if (st := store.file_state(s)) is not None
                },
                "embeddings": [
                    {
                        "id": e.id,
                        "content": e.content,
                        "metadata": e.metadata,
                        "embedding": e.vector.tolist(),
                        "timestamp": e.timestamp,
                    }
                    for e in store.iter_entries()
                ],
            }
    except StoreError:
        return None


def cut_last_record(path: Path, rng: random.Random) -> bool:
    """A power cut mid-append: the journal ends inside its last record. False when it has none."""
    jpath = journal_path(path)
    data = jpath.read_bytes() if jpath.exists() else b""
    pos, last = len(MAGIC), None
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        if pos + 8 + length > len(data):
            break
        last, pos = pos, pos + 8 + length
    if last is None:
        return False
    jpath.write_bytes(data[: rng.randrange(last + 1, pos)])
    return True


def _kill(daemon: Daemon, mode: str, rng: random.Random, horizon: float) -> None:
    path = daemon.config.parent / STORE
    jpath = journal_path(path)
    watched = {
        "journal": jpath,  # the instant the journal grows: a record appended, maybe not yet fsynced
        "folding": path.with_name(path.name + ".tmp"),  # a fold's temp JSON
        "cut": jpath.with_name(jpath.name + ".tmp"),  # the journal being cut after a fold
    }
    t0 = time.monotonic()
    size0 = jpath.stat().st_size if jpath.exists() else 0
    delay = rng.uniform(0.0, horizon)
    end = t0 + (horizon if mode == "anytime" else 60.0)
    settled: float | None = None  # when the run's change reached the journal
    while daemon.proc.poll() is None and time.monotonic() < end:
        now = time.monotonic()
        logged = b"" if mode == "anytime" else daemon.log_path.read_bytes()
        opened = mode == "anytime" or b'"event":"store_opened"' in logged
        if mode == "anytime" and now - t0 >= delay:
            break
        if opened and mode == "journal" and jpath.exists() and jpath.stat().st_size != size0:
            break
        if opened and mode in ("folding", "cut"):
            if watched[mode].exists():
                break
            if settled is None and b'"event":"store_journalled"' in logged:
                settled = now
            # No fold was due in this run, or it is over: kill the idle daemon, do not wait a minute.
            folding = b'"event":"store_fold_started"' in logged and b'"event":"store_folded"' not in logged
            if settled is not None and now - settled > 2.0 and not folding:
                break
        time.sleep(0.001)
    if daemon.proc.poll() is None:
        os.kill(daemon.proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_with_the_journal_never_loses_or_duplicates_a_change(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    seed = int(os.environ.get("EMBEDD_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    kills = int(os.environ.get("EMBEDD_JOURNAL_KILLS") or 60)
    print(f"\njournal crash test seed {seed} (rerun with EMBEDD_CRASH_SEED={seed}), {kills} kills")
    rng = random.Random(seed)
    env = journal_env(cli_env)
    cfg = write_crash_config(tmp_path, default_model)
    path = tmp_path / STORE
    # A small store, so the journal passes its fold threshold every few runs and kills find folds.
    corpus = Corpus(tmp_path / "inbox", rng, max_paragraphs=500)
    for _ in range(12):
        corpus.add(rng.randint(10, 25))
    daemon = Daemon(cfg, env)
    try:
        daemon.ready()
        wait_converged(path, corpus, daemon, read=reader_doc)
    finally:
        assert daemon.stop() == 0

    seen: Counter[str] = Counter()
    failures: list[str] = []
    for n in range(kills):
        corpus.mutate()
        mode = rng.choices(("anytime", "journal", "folding", "cut"), weights=(40, 30, 20, 10))[0]
        daemon = Daemon(cfg, env)
        try:
            _kill(daemon, mode, rng, horizon=8.0)
            daemon.proc.wait(timeout=60)
        finally:
            daemon.kill()
        names = {e["event"] for e in daemon.events()}
        seen.update(
            k for k in ("store_journalled", "store_fold_started", "store_folded", "store_journal_replayed")
            if k in names
        )  # fmt: skip
        cut = n % 5 == 4 and cut_last_record(path, rng)  # every fifth: a power cut mid-record
        seen["journal_cut_mid_record"] += cut
        raw = read_store(path)  # the JSON file alone: valid, whole versions only
        problems = ["no JSON file"] if raw is None else [f"json: {p}" for p in check_store(raw, corpus)]
        doc = reader_doc(path)  # what search, status and export see
        problems += (
            ["the loader refuses it"] if doc is None else [f"reader: {p}" for p in check_store(doc, corpus)]
        )
        if problems:
            failures.append(f"kill {n} ({mode}, cut {cut}): {problems[:5]}")
    print("journal crash summary:", dict(seen), f"{len(failures)} failures")

    daemon = Daemon(cfg, env)
    try:
        daemon.ready()
        wait_converged(path, corpus, daemon, read=reader_doc)
    finally:
        assert daemon.stop() == 0
    # A clean stop folds: the JSON file alone is current, the journal empty.
    final = read_store(path)
    assert final is not None and not check_store(final, corpus, current=True)
    assert journal_path(path).read_bytes() == MAGIC
    assert not failures, f"seed {seed}: {failures[:3]}"
    assert seen["store_journalled"] and seen["store_folded"], seen
    assert not list(path.parent.glob("*.tmp"))


def test_write_failure_during_a_journal_write_or_a_fold_keeps_the_store_consistent(
    failing_store: Mounted, tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    env = journal_env(cli_env)
    cfg = write_crash_config(tmp_path, default_model)
    path = tmp_path / STORE
    inbox = tmp_path / "inbox"
    for i in range(3):
        (inbox / f"doc{i}.txt").write_text(
            "\n\n".join(f"Document {i}, part {k}, is about harbours and lanterns." for k in range(12))
        )
    late = "\n\n".join(
        f"Late part {k}: a file about volcanoes, written while the disk fails." for k in range(40)
    )

    def files() -> set[str]:
        doc = reader_doc(path)
        return set(doc["files"]) if doc is not None else set()

    daemon = Daemon(cfg, env).ready()
    try:
        wait_for(lambda: len(files()) == 3, what="the first save")
        (inbox / "doc0.txt").write_text("Document 0 was edited: it is about copper kettles now.\n")
        wait_for(lambda: daemon.events("store_journalled"), what="a change in the journal")
        json_before, journal_before = path.read_bytes(), journal_path(path).read_bytes()

        # 1. The journal write fails: nothing durable changes, the change waits in memory.
        failing_store.inject()
        (inbox / "late.txt").write_text(late)
        failures = daemon.wait_event("store_save_failed", count=1, timeout=180)
        assert failing_store.reason in failures[0]["reason"] and "journal" in failures[0]["reason"]
        assert daemon.proc.poll() is None, "the daemon keeps running"
        assert path.read_bytes() == json_before and journal_path(path).read_bytes() == journal_before
        assert files() == {f"inbox/doc{i}.txt" for i in range(3)}

        failing_store.heal()
        wait_for(lambda: "inbox/late.txt" in files(), timeout=240, what="the retry once the fault is gone")
        # That journal passed 1/8 of the JSON file: a fold follows, on its own thread.
        wait_for(lambda: "inbox/late.txt" in (read_store(path) or {}).get("files", {}), what="a fold")

        # 2. A small change (no fold due), then the fold at the clean stop fails: the JSON file
        # stays as it was, the journal holds the change.
        journalled = len(daemon.events("store_journalled"))
        (inbox / "doc1.txt").write_text("Document 1 was edited: it is about brass lanterns now.\n")
        wait_for(lambda: len(daemon.events("store_journalled")) > journalled, what="the edit in the journal")
        json_before = path.read_bytes()
        failing_store.inject()
    finally:
        code = daemon.stop()
    assert code == 0
    assert daemon.events("store_fold_failed"), daemon.log_path.read_text()[-3000:]
    failing_store.heal()
    assert path.read_bytes() == json_before
    doc = reader_doc(path)
    assert doc is not None and not [p for p in check_store_files(doc) if p]
    edited = [e for e in doc["embeddings"] if e["metadata"]["source"] == "inbox/doc1.txt"]
    assert [e["content"] for e in edited] == ["Document 1 was edited: it is about brass lanterns now."]

    # 3. The next run replays the journal and folds at its clean stop.
    daemon = Daemon(cfg, env).ready()
    assert daemon.stop() == 0
    doc = read_store(path)
    assert doc is not None and set(doc["files"]) == {f"inbox/doc{i}.txt" for i in range(3)} | {
        "inbox/late.txt"
    }
    assert doc["count"] == len(doc["embeddings"]) == len({e["id"] for e in doc["embeddings"]})
    assert journal_path(path).read_bytes() == MAGIC
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
