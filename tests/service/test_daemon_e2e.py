"""The real daemon, end to end: the `embedd` CLI in a subprocess, the real default model,
real files and real watchdog observers. Every wait polls with a generous deadline."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support import Daemon, entries_by_source, make_pdf, read_store, wait_for, write_config

PARAGRAPHS = [
    f"Paragraph {i} is about {topic}. " + f"It explains {topic} in plain words for a new reader. " * 5
    for i, topic in enumerate(
        [
            "rivers",
            "bread",
            "compilers",
            "tax law",
            "bicycles",
            "volcanoes",
            "opera",
            "tea",
            "glaciers",
            "chess",
        ]
    )
]


def _store_where(path: Path, check: Any) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        store = read_store(path)
        return store if store is not None and check(store) else None

    return wait_for(probe, what="the store to reach the expected state")


def _sources(store: dict[str, Any]) -> set[str]:
    return {e["metadata"]["source"] for e in store["embeddings"]}


def _assert_valid_store(store: dict[str, Any], model_sha: str | None = None) -> None:
    assert store["version"] == "1.0"
    assert store["model"] == "all-MiniLM-L6-v2"
    assert store["dimensions"] == 384
    assert store["count"] == len(store["embeddings"])
    fp = store["fingerprint"]
    assert fp["pooling"] == "mean" and fp["normalize"] is True
    assert (fp["chunk_size"], fp["chunk_overlap"]) == (500, 50)
    if model_sha is not None:
        assert fp["model_sha256"] == model_sha
    ids = [e["id"] for e in store["embeddings"]]
    assert len(ids) == len(set(ids)), "ids are unique"
    for e in store["embeddings"]:
        assert len(e["embedding"]) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in e["embedding"])), 1.0, abs_tol=1e-4)
        assert e["content"].strip()
        assert isinstance(e["timestamp"], int) and e["timestamp"] > 1_700_000_000_000
        meta = e["metadata"]
        assert set(meta) >= {"source", "page", "chunk", "hash"}


@pytest.fixture
def workdir(tmp_path: Path, default_model: Path) -> tuple[Path, Path]:
    return tmp_path, write_config(tmp_path, default_model)


def test_daemon_follows_the_folder(
    workdir: tuple[Path, Path], cli_env: dict[str, str], default_model: Path
) -> None:
    root, cfg = workdir
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    (inbox / "notes.txt").write_text("Meeting notes: the harbour survey starts in May.\n\nBring boots.\n")
    daemon = Daemon(cfg, cli_env).ready()
    try:
        # txt, md and a real three-page PDF.
        (inbox / "long.md").write_text("# Guide\n\n" + "\n\n".join(PARAGRAPHS) + "\n")
        pdf_pages = ["The first page covers orchards and apples.", "", "The third page is about lighthouses."]
        (inbox / "report.pdf").write_bytes(make_pdf(pdf_pages))
        store = _store_where(
            store_path, lambda s: {"inbox/notes.txt", "inbox/long.md", "inbox/report.pdf"} <= _sources(s)
        )
        _assert_valid_store(store)
        pdf = entries_by_source(store, "inbox/report.pdf")
        assert [e["metadata"]["page"] for e in pdf] == [1, 3]
        assert "lighthouses" in pdf[1]["content"]
        assert all(e["metadata"]["page"] is None for e in entries_by_source(store, "inbox/notes.txt"))
        md = entries_by_source(store, "inbox/long.md")
        assert len(md) >= 10
        assert [e["metadata"]["chunk"] for e in md] == list(range(len(md)))

        # Edit one paragraph: only the chunks that changed get new vectors.
        before = {e["metadata"]["hash"]: e["timestamp"] for e in md}
        edited = list(PARAGRAPHS)
        edited[4] = "Paragraph 4 is now about sailing boats and the wind, nothing else."
        (inbox / "long.md").write_text("# Guide\n\n" + "\n\n".join(edited) + "\n")
        store = _store_where(store_path, lambda s: any("sailing" in e["content"] for e in s["embeddings"]))
        md_after = entries_by_source(store, "inbox/long.md")
        new = [e for e in md_after if e["metadata"]["hash"] not in before]
        kept = [e for e in md_after if e["metadata"]["hash"] in before]
        assert 1 <= len(new) <= 2, [e["content"][:40] for e in new]
        assert len(kept) >= len(md_after) - 2
        assert all(e["timestamp"] == before[e["metadata"]["hash"]] for e in kept)
        assert all(e["timestamp"] > max(before.values()) for e in new)
        indexed = daemon.wait_event("file_indexed", source="inbox/long.md", count=2)[-1]
        assert indexed["embedded"] == len(new) and indexed["reused"] >= len(kept)

        # Rename: same vectors, same timestamps, new source; nothing embedded.
        snapshot = {(e["metadata"]["hash"], e["timestamp"]) for e in md_after}
        (inbox / "long.md").rename(inbox / "renamed.md")
        store = _store_where(
            store_path, lambda s: "inbox/renamed.md" in _sources(s) and "inbox/long.md" not in _sources(s)
        )
        moved = entries_by_source(store, "inbox/renamed.md")
        assert {(e["metadata"]["hash"], e["timestamp"]) for e in moved} == snapshot
        assert daemon.events("file_renamed")

        # An editor's save: write a temp file, rename it over the target. One update, no temp.
        tmp = inbox / ".notes.txt.swp"
        tmp.write_text("Meeting notes: the harbour survey moved to June.\n\nBring boots.\n")
        os.replace(tmp, inbox / "notes.txt")
        store = _store_where(store_path, lambda s: any("June" in e["content"] for e in s["embeddings"]))
        assert not any(".swp" in src for src in _sources(store))

        # Delete: its entries leave the store.
        (inbox / "report.pdf").unlink()
        store = _store_where(store_path, lambda s: "inbox/report.pdf" not in _sources(s))
        _assert_valid_store(store)
        assert set(store["files"]) == _sources(store)
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0
    final = read_store(store_path)
    assert final is not None
    _assert_valid_store(final)
    assert not list((root / "data").glob("*.tmp"))


def test_restart_reembeds_nothing_and_catches_up(workdir: tuple[Path, Path], cli_env: dict[str, str]) -> None:
    root, cfg = workdir
    inbox, store_path = root / "inbox", root / "data" / "embeddings.json"
    for i in range(6):
        (inbox / f"doc{i}.md").write_text(PARAGRAPHS[i] + "\n\n" + PARAGRAPHS[(i + 3) % 10])
    daemon = Daemon(cfg, cli_env).ready()
    store = _store_where(store_path, lambda s: len(_sources(s)) == 6)
    assert daemon.stop(signal.SIGINT) == 0
    stamps = {
        (e["metadata"]["source"], e["metadata"]["hash"], e["timestamp"])
        for e in read_store(store_path)["embeddings"]
    }  # type: ignore[index]

    # While the daemon is down: one file deleted, one added, one renamed.
    (inbox / "doc0.md").unlink()
    (inbox / "doc1.md").rename(inbox / "doc1-renamed.md")
    (inbox / "fresh.txt").write_text("A file that arrived while the daemon was down, about lighthouses.")

    daemon = Daemon(cfg, cli_env).ready()
    try:
        store = _store_where(
            store_path,
            lambda s: (
                _sources(s)
                == {
                    "inbox/doc1-renamed.md",
                    "inbox/doc2.md",
                    "inbox/doc3.md",
                    "inbox/doc4.md",
                    "inbox/doc5.md",
                    "inbox/fresh.txt",
                }
            ),
        )
        indexed = daemon.events("file_indexed")
        assert [e["source"] for e in indexed] == ["inbox/fresh.txt"], "unchanged files are not read again"
        after = {
            (e["metadata"]["source"], e["metadata"]["hash"], e["timestamp"]) for e in store["embeddings"]
        }
        unchanged = {
            t for t in stamps if t[0] in {"inbox/doc2.md", "inbox/doc3.md", "inbox/doc4.md", "inbox/doc5.md"}
        }
        assert unchanged <= after
        renamed_before = {(h, ts) for s, h, ts in stamps if s == "inbox/doc1.md"}
        assert {(h, ts) for s, h, ts in after if s == "inbox/doc1-renamed.md"} == renamed_before
    finally:
        assert daemon.stop() == 0


def test_second_daemon_on_the_same_store_exits_with_a_clear_error(
    workdir: tuple[Path, Path], cli_env: dict[str, str]
) -> None:
    _, cfg = workdir
    first = Daemon(cfg, cli_env).ready()
    try:
        second = Daemon(cfg, cli_env)
        code = second.proc.wait(timeout=120)
        second.stop()
        assert code == 4
        locked = second.events("store_locked")
        assert locked and "lock" in locked[0]["error"]
    finally:
        assert first.stop() == 0


def test_missing_model_exits_3_before_writing_anything(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cfg = write_config(tmp_path, tmp_path / "models" / "nope.gguf")
    (tmp_path / "inbox" / "a.txt").write_text("hello")
    daemon = Daemon(cfg, cli_env)
    code = daemon.proc.wait(timeout=120)
    daemon.stop()
    assert code == 3
    err = daemon.events("model_error")[0]["error"]
    assert "nope.gguf" in err and "embedd model build" in err
    assert not (tmp_path / "data").exists()


def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, extra="[chunking]\nsize = 100\noverlap = 200\n")
    daemon = Daemon(cfg, cli_env)
    code = daemon.proc.wait(timeout=120)
    daemon.stop()
    assert code == 2
    event = daemon.events("config_error")[0]
    assert event["field"] == "chunking.overlap" and event["value"] == 200


def test_changed_chunking_is_refused_then_reembedded_on_request(
    workdir: tuple[Path, Path], cli_env: dict[str, str], default_model: Path
) -> None:
    root, cfg = workdir
    store_path = root / "data" / "embeddings.json"
    (root / "inbox" / "a.md").write_text("\n\n".join(PARAGRAPHS[:3]))
    daemon = Daemon(cfg, cli_env).ready()
    _store_where(store_path, lambda s: s["count"] > 0)
    assert daemon.stop() == 0

    cfg = write_config(root, default_model, extra="[chunking]\nsize = 300\noverlap = 30\n")
    refused = Daemon(cfg, cli_env)
    assert refused.proc.wait(timeout=120) == 5
    refused.stop()
    message = refused.events("fingerprint_mismatch")[0]["error"]
    assert "chunk_size" in message and "--reembed" in message
    assert json.loads(store_path.read_bytes())["fingerprint"]["chunk_size"] == 500

    daemon = Daemon(cfg, cli_env, "--reembed").ready()
    try:
        store = _store_where(store_path, lambda s: s["fingerprint"]["chunk_size"] == 300 and s["count"] > 0)
        assert all(len(e["content"]) <= 300 for e in store["embeddings"])
    finally:
        assert daemon.stop() == 0


def test_sighup_reloads_folders_without_reloading_the_model(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model)
    store_path = tmp_path / "data" / "embeddings.json"
    (tmp_path / "inbox" / "old.md").write_text("A note in the first folder, about orchards.")
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "new.md").write_text("A paper in the second folder, about glaciers.")
    daemon = Daemon(cfg, cli_env).ready()
    try:
        _store_where(store_path, lambda s: _sources(s) == {"inbox/old.md"})
        # Swap the watched folder and reload.
        text = cfg.read_text().replace('path = "inbox"', 'path = "papers"')
        cfg.write_text(text)
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = daemon.wait_event("config_reloaded")[0]
        assert reloaded["added"] == [str(tmp_path / "papers")] and reloaded["removed"] == [
            str(tmp_path / "inbox")
        ]
        _store_where(store_path, lambda s: _sources(s) == {"papers/new.md"})
        # New files in the new folder are watched live; the old folder is not.
        (tmp_path / "papers" / "live.md").write_text("Dropped after the reload, about volcanoes.")
        (tmp_path / "inbox" / "ignored.md").write_text("Dropped into the folder no longer watched.")
        _store_where(store_path, lambda s: _sources(s) == {"papers/new.md", "papers/live.md"})
        # A broken file on the next HUP is reported and changes nothing.
        cfg.write_text(text.replace("debounce_ms = 200", "debounce_ms = -1"))
        daemon.proc.send_signal(signal.SIGHUP)
        failed = daemon.wait_event("config_reload_failed")[0]
        assert failed["field"] == "daemon.debounce_ms"
        assert len(daemon.events("model_loaded")) == 1, "the model was not reloaded"
    finally:
        assert daemon.stop() == 0
    assert "inbox/ignored.md" not in _sources(read_store(store_path) or {"embeddings": []})
