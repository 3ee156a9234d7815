"""When the Saver journals and when it folds: a real store on real files, a hand-driven clock.

The store journals whatever its size (``EMBEDD_JOURNAL_ABOVE_BYTES=0``); folds run on the
Saver's own thread, so each test polls for the condition it waits for.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from support import wait_for

from daemon.service import saver as saver_module
from daemon.service.metrics import Metrics
from daemon.service.notices import Notices
from daemon.service.priority import Priority, current
from daemon.service.saver import FOLD_AFTER_S, FOLD_FRACTION, SAVE_RETRY_S, Saver
from daemon.store.fold import FoldPlan, write_fold
from daemon.store.format import content_hash
from daemon.store.journal import MAGIC, journal_path
from daemon.store.store import FileState, Fingerprint, NewEntry, Store

DIMS = 8


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entries(source: str, n: int, tag: str = "") -> list[NewEntry]:
    rng = np.random.default_rng(zlib.crc32(f"{source}|{tag}".encode()))
    texts = [f"{source} chunk {i} {tag}" for i in range(n)]
    vecs = rng.standard_normal((n, DIMS)).astype(np.float32)
    return [NewEntry(t, None, i, content_hash(t), vecs[i], 1_764_100_000_000) for i, t in enumerate(texts)]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("EMBEDD_JOURNAL_ABOVE_BYTES", "0")
    s = Store.open(
        tmp_path / "data" / "embeddings.json",
        model="m",
        dimensions=DIMS,
        fingerprint=Fingerprint("ab" * 32, "mean", True, 500, 50),
        keyword=False,
    )
    for k in range(60):  # a JSON file far bigger than one change
        s.replace_source(f"inbox/f{k}.txt", entries(f"inbox/f{k}.txt", 3), FileState(k, k, k))
    s.save()
    yield s
    s.close()


def edit(store: Store, saver: Saver, k: int, n: int = 1) -> None:
    store.replace_source("inbox/f0.txt", entries("inbox/f0.txt", n, tag=str(k)), FileState(1, 1, 100 + k))
    saver.mark_dirty()


def json_sources(store: Store) -> dict[str, object]:
    return json.loads(store.path.read_bytes())["files"]  # type: ignore[no-any-return]


def samples(metrics: Metrics) -> dict[str, float]:
    families = text_string_to_metric_families(metrics.exposition().decode())
    return {s.name: s.value for family in families for s in family.samples if not s.labels}


def test_a_change_is_journalled_and_folded_once_it_is_old_enough(store: Store) -> None:
    clock = Clock()
    notices, metrics = Notices(), Metrics()
    notices.listen(metrics.hear)
    saver = Saver(store, clock, notices)
    edit(store, saver, 1)
    assert saver.maybe_save(quiet=True)
    assert store.unfolded and not store.dirty and not saver.folding
    assert store.journal_bytes < FOLD_FRACTION * store.json_bytes
    appended = samples(metrics)["embedd_store_written_bytes_total"]
    assert appended == store.journal_bytes > 0
    clock.now += FOLD_AFTER_S - 1
    saver.maybe_save(quiet=True)
    assert not saver.folding and store.unfolded
    clock.now += 1
    saver.maybe_save(quiet=True)
    assert saver.folding  # on its own thread
    wait_for(lambda: saver.maybe_save(quiet=True) is False and not saver.folding, what="the fold adopted")
    assert not store.unfolded
    assert json_sources(store)["inbox/f0.txt"] == {"size": 1, "mtime_ns": 1, "inode": 101}
    assert journal_path(store.path).read_bytes() == MAGIC
    # The metrics count the journal append and the fold, and the bytes each wrote.
    seen = samples(metrics)
    assert seen["embedd_store_saves_total"] == 1 and seen["embedd_store_folds_total"] == 1
    assert seen["embedd_store_fold_seconds_count"] == 1
    assert seen["embedd_store_written_bytes_total"] > appended


def test_a_journal_past_its_fraction_of_the_json_file_is_folded(store: Store) -> None:
    saver = Saver(store, Clock())
    k = 0
    while store.journal_bytes < FOLD_FRACTION * store.json_bytes:
        k += 1
        edit(store, saver, k, n=3)
        saver.maybe_save(quiet=True)
        if saver.folding:
            break
    assert saver.folding
    wait_for(lambda: saver.maybe_save(quiet=True) is False and not saver.folding, what="the fold adopted")
    assert not store.unfolded and store.journal_bytes == 0


def test_a_clean_stop_folds_and_waits_for_a_fold_in_progress(store: Store) -> None:
    clock = Clock()
    saver = Saver(store, clock)
    edit(store, saver, 1)
    saver.maybe_save(quiet=True)
    clock.now += FOLD_AFTER_S
    saver.maybe_save(quiet=True)  # a fold starts...
    edit(store, saver, 2)  # ... and a change comes after its plan
    saver.maybe_save(quiet=False, force=True)  # the stop
    assert not saver.folding and not store.unfolded and not store.dirty
    assert json_sources(store)["inbox/f0.txt"] == {"size": 1, "mtime_ns": 1, "inode": 102}


def test_a_failed_fold_is_logged_and_retried_later(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    saver = Saver(store, clock)
    edit(store, saver, 1)
    saver.maybe_save(quiet=True)
    before = store.path.read_bytes()
    clock.now += FOLD_AFTER_S

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with capture_logs() as logs:
        monkeypatch.setattr(os, "replace", full)
        saver.maybe_save(quiet=True)
        wait_for(lambda: saver.maybe_save(quiet=True) is False and not saver.folding, what="the failed fold")
        monkeypatch.undo()
    failed = [e for e in logs if e["event"] == "store_fold_failed"]
    assert failed and "No space left on device" in failed[0]["reason"]
    assert store.path.read_bytes() == before and store.unfolded
    saver.maybe_save(quiet=True)
    assert not saver.folding  # the retry waits for its backoff
    clock.now += SAVE_RETRY_S[0]
    saver.maybe_save(quiet=True)
    wait_for(lambda: saver.maybe_save(quiet=True) is False and not saver.folding, what="the retried fold")
    assert not store.unfolded


def test_a_fold_is_written_at_idle_io_and_the_lowest_cpu_priority(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Priority] = []
    before = current()

    def write(plan: FoldPlan) -> None:
        seen.append(current())  # on the fold's own thread
        write_fold(plan)

    monkeypatch.setattr(saver_module, "write_fold", write)
    clock = Clock()
    saver = Saver(store, clock)
    edit(store, saver, 1)
    saver.maybe_save(quiet=True)
    clock.now += FOLD_AFTER_S
    saver.maybe_save(quiet=True)
    wait_for(lambda: saver.maybe_save(quiet=True) is False and not saver.folding, what="the fold adopted")
    assert not store.unfolded
    assert [(p.nice, p.cpu_policy, p.io_class) for p in seen] == [(19, "batch", "idle")]
    assert current() == before  # the worker's own thread is left as it was
