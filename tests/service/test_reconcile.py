"""Startup/periodic reconcile through the worker's own tick: real files, store and parts, a
fake embedder, a fake clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeEmbedder
from structlog.testing import capture_logs

from daemon.config import Config, parse_config
from daemon.service.notices import Notices
from daemon.service.parts import Parts, build_parts
from daemon.service.service import Service, fingerprint_for
from daemon.store.store import Store
from daemon.watch.events import EventSink

BODY = "Reconcile test text about {topic}. " * 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(root: Path) -> Config:
    return parse_config(
        {
            "model": {"path": "model.gguf"},
            "store": {"path": "data/store.json"},
            "watch": [{"path": "inbox"}],
            "daemon": {"debounce_ms": 100},
        },
        root,
    )


class Harness:
    """A worker stepped by hand: real files, store, pipeline, debouncer and saver on a fake clock;
    its watcher is never started (the tests report changes through reconcile or handle)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.inbox.mkdir(exist_ok=True)
        self.config = _config(root)
        self.embedder = FakeEmbedder()
        self.clock = FakeClock()
        self.store = self._open()
        self.service = self._service()

    def _open(self) -> Store:
        fingerprint = fingerprint_for(self.config, self.embedder)
        return Store.open(self.config.store.path, model="fake-model", dimensions=8, fingerprint=fingerprint)

    def _service(self) -> Service:
        def parts(sink: EventSink) -> Parts:
            self.parts = build_parts(
                self.config, self.embedder, self.store, sink, clock=self.clock, notices=Notices()
            )
            return self.parts

        return Service(self.config, self.embedder, self.store, clock=self.clock, parts=parts)

    def drain(self) -> int:
        """Tick the worker, letting the time it would sleep pass, until nothing is queued;
        returns how many events it handled."""
        handled = 0
        for _ in range(100):
            if self.service.debouncer.pending() == 0:
                return handled
            tick = self.service.tick()
            handled += tick.handled
            # A real wait overshoots a little; exactly wait_s can fall short of the deadline
            # by a rounding error.
            self.clock.now += tick.wait_s + 1e-6
        raise AssertionError("debouncer never drained")

    def reopen(self) -> None:
        """A daemon restart: the worker's last act (the final save), close, open, a new worker."""
        self.service.finish()
        self.store.close()
        self.store = self._open()
        self.service = self._service()

    def restart_with(self, config: Config) -> None:
        """A restart with another configuration."""
        self.config = config
        self.reopen()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


def test_scan_queues_new_files_and_skips_unchanged_ones(h: Harness) -> None:
    for name in ("a.md", "b.txt", "sub/c.md"):
        (h.inbox / name).parent.mkdir(exist_ok=True)
        (h.inbox / name).write_text(BODY.format(topic=name))
    assert h.service.reconcile() == 3
    assert h.drain() == 3
    assert h.store.sources() == {"inbox/a.md", "inbox/b.txt", "inbox/sub/c.md"}
    h.embedder.calls.clear()
    assert h.service.reconcile() == 0
    h.reopen()
    assert h.service.reconcile() == 0, "a restart recognises unchanged files by size, mtime and inode"
    assert h.embedder.calls == []


def test_excluded_hidden_and_unlisted_files_are_not_indexed(h: Harness) -> None:
    (h.inbox / ".hidden").mkdir()
    (h.inbox / ".hidden" / "x.md").write_text(BODY.format(topic="hidden"))
    (h.inbox / "draft.md~").write_text(BODY.format(topic="backup"))
    (h.inbox / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (h.inbox / "keep.md").write_text(BODY.format(topic="kept"))
    assert h.service.reconcile() == 1
    h.drain()
    assert h.store.sources() == {"inbox/keep.md"}


def test_files_deleted_while_down_leave_the_store(h: Harness) -> None:
    (h.inbox / "a.md").write_text(BODY.format(topic="a"))
    (h.inbox / "b.md").write_text(BODY.format(topic="b"))
    h.service.reconcile()
    h.drain()
    h.reopen()
    (h.inbox / "a.md").unlink()
    with capture_logs() as logs:
        h.service.reconcile()
    assert h.store.sources() == {"inbox/b.md"}
    assert any(e["event"] == "file_removed" and e["source"] == "inbox/a.md" for e in logs)


def test_a_rename_while_down_is_recognised_by_inode_and_embeds_nothing(h: Harness) -> None:
    (h.inbox / "a.md").write_text(BODY.format(topic="a"))
    h.service.reconcile()
    h.drain()
    before = [(c.hash, c.timestamp) for c in h.store.entries_for("inbox/a.md")]
    h.reopen()
    h.embedder.calls.clear()
    (h.inbox / "sub").mkdir()
    (h.inbox / "a.md").rename(h.inbox / "sub" / "renamed.md")
    assert h.service.reconcile() == 0
    assert h.store.sources() == {"inbox/sub/renamed.md"}
    assert [(c.hash, c.timestamp) for c in h.store.entries_for("inbox/sub/renamed.md")] == before
    assert h.embedder.calls == []


def test_a_changed_file_is_queued_and_reindexed(h: Harness) -> None:
    (h.inbox / "a.md").write_text(BODY.format(topic="first"))
    h.service.reconcile()
    h.drain()
    (h.inbox / "a.md").write_text(BODY.format(topic="second version"))
    assert h.service.reconcile() == 1
    h.drain()
    assert any("second version" in t for t in h.embedder.embedded_texts)


def test_a_symlink_out_of_the_folder_is_never_followed(h: Harness, tmp_path: Path) -> None:
    secret = tmp_path / "outside.md"
    secret.write_text(BODY.format(topic="secret outside the folder"))
    (h.inbox / "link.md").symlink_to(secret)
    with capture_logs() as logs:
        h.service.reconcile()
        h.drain()
    assert h.store.sources() == set()
    assert not any("secret" in t for t in h.embedder.embedded_texts)
    skipped = [e for e in logs if e["event"] == "file_skipped"]
    assert skipped and "symlink" in skipped[0]["reason"] and skipped[0]["path"].endswith("link.md")


def test_a_failed_file_is_skipped_until_it_changes(h: Harness) -> None:
    bad = h.inbox / "bad.txt"
    bad.write_bytes(b"binary\x00\x00data")
    with capture_logs() as logs:
        h.service.reconcile()
        h.drain()
        assert h.service.reconcile() == 0
    assert [e["event"] for e in logs].count("file_skipped") == 1
    assert "binary" in next(e for e in logs if e["event"] == "file_skipped")["reason"]
    bad.write_text(BODY.format(topic="now it is text"))
    os.utime(bad, ns=(10**18, 10**18))
    assert h.service.reconcile() == 1
    h.drain()
    assert h.store.sources() == {"inbox/bad.txt"}


def test_a_missing_watch_folder_is_unavailable_and_keeps_its_files(h: Harness) -> None:
    (h.inbox / "a.md").write_text(BODY.format(topic="a"))
    h.service.reconcile()
    h.drain()
    moved = h.root / "elsewhere"
    h.inbox.rename(moved)
    with capture_logs() as logs:
        h.service.reconcile()
        h.service.reconcile()
    outages = [e for e in logs if e["event"] == "folder_unavailable"]
    assert len(outages) == 1, "logged once per outage, not at every rescan"
    assert outages[0]["log_level"] == "error" and "missing" in outages[0]["reason"]
    assert h.store.sources() == {"inbox/a.md"}
    [shown] = h.service.activity()["unavailable_folders"]  # type: ignore[misc]
    assert shown["path"] == str(h.inbox) and shown["since"].endswith("Z")
    # Back: unchanged files cost nothing.
    moved.rename(h.inbox)
    h.embedder.calls.clear()
    with capture_logs() as logs:
        assert h.service.reconcile() == 0
    assert [e["event"] for e in logs if e["event"].startswith("folder_")] == ["folder_back"]
    assert h.service.activity()["unavailable_folders"] == []
    assert h.embedder.calls == []


def test_an_empty_root_while_the_store_holds_its_files_is_unavailable(h: Harness) -> None:
    """An unmounted disk leaves an empty mount point behind: not "every file deleted"."""
    for name in ("a.md", "b.md"):
        (h.inbox / name).write_text(BODY.format(topic=name))
    h.service.reconcile()
    h.drain()
    hidden = h.root / "hidden"
    hidden.mkdir()
    for name in ("a.md", "b.md"):
        (h.inbox / name).rename(hidden / name)
    with capture_logs() as logs:
        h.service.reconcile()
    assert h.store.sources() == {"inbox/a.md", "inbox/b.md"}
    [outage] = [e for e in logs if e["event"] == "folder_unavailable"]
    assert "empty while the store holds 2 files" in outage["reason"] and outage["kept_files"] == 2
    # One file really deleted from a present folder still leaves at once.
    (hidden / "a.md").rename(h.inbox / "a.md")
    (hidden / "b.md").unlink()
    h.service.reconcile()
    assert h.store.sources() == {"inbox/a.md"}
    assert h.service.activity()["unavailable_folders"] == []


def test_live_deletes_of_every_file_still_remove_them(h: Harness) -> None:
    from daemon.watch.events import EventKind, FileEvent

    for name in ("a.md", "b.md"):
        (h.inbox / name).write_text(BODY.format(topic=name))
    h.service.reconcile()
    h.drain()
    for name in ("a.md", "b.md"):
        (h.inbox / name).unlink()
        h.service.handle(FileEvent(EventKind.DELETED, h.inbox / name))
    assert h.store.sources() == set()
    assert h.service.reconcile() == 0
    assert h.service.activity()["unavailable_folders"] == []


def test_the_roots_own_deletion_event_keeps_its_files(h: Harness) -> None:
    from daemon.watch.events import EventKind, FileEvent

    (h.inbox / "a.md").write_text(BODY.format(topic="a"))
    h.service.reconcile()
    h.drain()
    h.inbox.rename(h.root / "away")
    h.service.handle(FileEvent(EventKind.DELETED, h.inbox / "a.md"))
    h.service.handle(FileEvent(EventKind.DELETED, h.inbox))
    h.service.handle(FileEvent(EventKind.CHANGED, h.inbox / "a.md"))
    assert h.store.sources() == {"inbox/a.md"}
    assert len(h.service.activity()["unavailable_folders"]) == 1  # type: ignore[arg-type]


def test_a_folder_no_longer_configured_leaves_at_restart(h: Harness) -> None:
    (h.inbox / "a.md").write_text(BODY.format(topic="a"))
    h.service.reconcile()
    h.drain()
    (h.root / "other").mkdir()
    h.restart_with(
        parse_config(
            {
                "model": {"path": "model.gguf"},
                "store": {"path": "data/store.json"},
                "watch": [{"path": "other"}],
            },
            h.root,
        )
    )
    with capture_logs() as logs:
        h.service.reconcile()
    assert h.store.sources() == set()
    assert any(e["event"] == "file_removed" and e["reason"] == "folder no longer watched" for e in logs)


def test_forget_removes_a_folder_and_nothing_beside_it(h: Harness) -> None:
    for name in ("old/a.md", "old/b.md", "older.md", "keep.md"):
        (h.inbox / name).parent.mkdir(exist_ok=True)
        (h.inbox / name).write_text(BODY.format(topic=name))
    h.service.reconcile()
    h.drain()
    assert h.service.forget("inbox/old") == ["inbox/old/a.md", "inbox/old/b.md"]
    assert h.store.sources() == {"inbox/older.md", "inbox/keep.md"}


def test_the_tick_that_empties_the_queue_saves_the_store(h: Harness) -> None:
    for name in ("a.md", "b.md"):
        (h.inbox / name).write_text(BODY.format(topic=name))
    h.service.reconcile()
    with capture_logs() as logs:
        assert h.drain() == 2
    said = [
        e["event"] for e in logs if e["event"] in ("file_indexed", "store_saved") and e["log_level"] == "info"
    ]
    assert said == [
        "file_indexed",
        "file_indexed",
        "store_saved",
    ], "one save for the burst, after its last file"
    assert not h.store.dirty and not h.parts.saver.pending
    h.store.close()
    h.store = h._open()  # what is on disk, without the worker's final save
    assert h.store.sources() == {"inbox/a.md", "inbox/b.md"}
    h.service = h._service()


def test_the_periodic_rescan_finds_a_file_no_event_reported(h: Harness) -> None:
    h.service.begin()
    assert h.service.tick().handled == 0
    (h.inbox / "quiet.md").write_text(BODY.format(topic="written while the watch was blind"))
    h.clock.now += h.config.daemon.rescan_interval_s - 1.0
    h.service.tick()
    assert h.service.debouncer.pending() == 0, "no rescan before its interval"
    h.clock.now += 1.0
    with capture_logs() as logs:
        h.service.tick()
        assert h.drain() == 1
    assert any(e["event"] == "rescan_done" and e["queued"] == 1 for e in logs)
    assert h.store.sources() == {"inbox/quiet.md"}


def test_a_forget_asked_of_the_worker_is_done_by_its_next_tick(h: Harness) -> None:
    for name in ("old/a.md", "keep.md"):
        (h.inbox / name).parent.mkdir(exist_ok=True)
        (h.inbox / name).write_text(BODY.format(topic=name))
    h.service.reconcile()
    h.drain()
    asked = h.service.forgets.submit("inbox/old")
    assert not asked.done()
    h.service.tick()
    assert asked.result(timeout=0) == ["inbox/old/a.md"]
    assert h.store.sources() == {"inbox/keep.md"}
