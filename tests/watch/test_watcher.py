"""Watcher with real watchdog observers on real directories (no fakes of the filesystem)."""

from __future__ import annotations

import errno
import shutil
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from watchdog.events import EventsLostEvent

from daemon.watch import watcher as watcher_mod
from daemon.watch.events import EventKind, FileEvent
from daemon.watch.watcher import Watcher

DEADLINE_S = 10.0


class Sink:
    """Collects events from watchdog's threads and lets the test wait for a condition."""

    def __init__(self) -> None:
        self.events: list[FileEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: FileEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[FileEvent]], bool]) -> list[FileEvent]:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.events), DEADLINE_S)
            snapshot = list(self.events)
        assert ok, f"condition not met within {DEADLINE_S} s; events seen: {snapshot}"
        return snapshot

    def wait_event(self, event: FileEvent) -> list[FileEvent]:
        return self.wait_for(lambda events: event in events)

    def wait_any(self, *candidates: FileEvent) -> list[FileEvent]:
        return self.wait_for(lambda events: any(c in events for c in candidates))

    def since(self, mark: int) -> list[FileEvent]:
        with self._cond:
            return self.events[mark:]

    def mark(self) -> int:
        with self._cond:
            return len(self.events)


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition that no event announces."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {DEADLINE_S} s"
        time.sleep(0.01)


def changed(path: Path) -> FileEvent:
    return FileEvent(EventKind.CHANGED, path)


def deleted(path: Path) -> FileEvent:
    return FileEvent(EventKind.DELETED, path)


def moved(src: Path, dest: Path) -> FileEvent:
    return FileEvent(EventKind.MOVED, src, dest)


def rescan(path: Path) -> FileEvent:
    return FileEvent(EventKind.RESCAN, path)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def make_watcher(sink: Sink) -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def make(roots: list[tuple[Path, bool]], **kwargs: Any) -> Watcher:
        watcher = Watcher(roots, sink, poll_interval_s=0.1, supervise_interval_s=0.05, **kwargs)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop()


@pytest.fixture(params=["native", "polling"])
def started(request: pytest.FixtureRequest, root: Path, make_watcher: Callable[..., Watcher]) -> Watcher:
    """A running watcher on ``root``, once with inotify and once polling."""
    watcher = make_watcher([(root, True)], polling=request.param == "polling")
    watcher.start()
    assert watcher.modes == {root: request.param}
    return watcher


@pytest.fixture
def native(root: Path, make_watcher: Callable[..., Watcher]) -> Watcher:
    watcher = make_watcher([(root, True)])
    watcher.start()
    assert watcher.modes == {root: "native"}
    return watcher


# -- plain file operations, with both observers --


def test_create(started: Watcher, root: Path, sink: Sink) -> None:
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))


def test_modify(root: Path, make_watcher: Callable[..., Watcher], sink: Sink) -> None:
    (root / "a.md").write_text("hello")
    make_watcher([(root, True)]).start()
    with (root / "a.md").open("a") as f:
        f.write(" world")
    sink.wait_event(changed(root / "a.md"))


def test_delete(root: Path, started: Watcher, sink: Sink) -> None:
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))
    (root / "a.md").unlink()
    sink.wait_event(deleted(root / "a.md"))


def test_rename_within_root(started: Watcher, root: Path, sink: Sink) -> None:
    (root / "sub").mkdir()
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))
    (root / "a.md").rename(root / "sub" / "b.md")
    sink.wait_event(moved(root / "a.md", root / "sub" / "b.md"))


def test_move_out_of_root_is_a_delete(started: Watcher, root: Path, outside: Path, sink: Sink) -> None:
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))
    (root / "a.md").rename(outside / "a.md")
    sink.wait_event(deleted(root / "a.md"))


def test_move_into_root_is_a_change(started: Watcher, root: Path, outside: Path, sink: Sink) -> None:
    (outside / "a.md").write_text("hello")
    (outside / "a.md").rename(root / "a.md")
    sink.wait_event(changed(root / "a.md"))
    assert all(event.path.is_relative_to(root) for event in sink.events)


def test_directory_delete(root: Path, make_watcher: Callable[..., Watcher], sink: Sink) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "x.md").write_text("x")
    (root / "d" / "e" / "y.md").write_text("y")
    make_watcher([(root, True)]).start()
    shutil.rmtree(root / "d")
    sink.wait_event(deleted(root / "d"))


def test_created_directory_asks_for_a_rescan(started: Watcher, root: Path, sink: Sink) -> None:
    (root / "new").mkdir()
    (root / "new" / "early.md").write_text("may land before the watch exists")
    sink.wait_event(rescan(root / "new"))


def test_deleted_root_is_reported_and_watched_again_when_it_returns(
    started: Watcher, root: Path, sink: Sink
) -> None:
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))
    shutil.rmtree(root)
    sink.wait_event(deleted(root))
    wait_until(lambda: started.modes[root] is None)
    mark = sink.mark()
    root.mkdir()
    (root / "b.md").write_text("while unwatched")
    sink.wait_for(lambda events: rescan(root) in events[mark:])
    (root / "c.md").write_text("watched again")
    sink.wait_event(changed(root / "c.md"))


# -- inotify specifics --


@pytest.mark.parametrize("temp_name", [".foo.md.swp", "foo.md.tmp"])
def test_editor_style_save(native: Watcher, root: Path, sink: Sink, temp_name: str) -> None:
    target = root / "foo.md"
    target.write_text("old")
    sink.wait_event(changed(target))
    temp = root / temp_name
    temp.write_text("new content")
    temp.replace(target)  # what os.replace does
    sink.wait_any(moved(temp, target), changed(target))


def test_directory_move_within_root_is_one_move(native: Watcher, root: Path, sink: Sink) -> None:
    (root / "d").mkdir()
    (root / "d" / "x.md").write_text("x")
    sink.wait_event(changed(root / "d" / "x.md"))
    mark = sink.mark()
    (root / "d").rename(root / "e")
    sink.wait_event(moved(root / "d", root / "e"))
    (root / "sentinel.md").write_text("s")  # events arrive in order: anything else came before
    sink.wait_event(changed(root / "sentinel.md"))
    assert [e for e in sink.since(mark) if e.kind is EventKind.MOVED] == [moved(root / "d", root / "e")]


def test_directory_moved_out_is_deleted(native: Watcher, root: Path, outside: Path, sink: Sink) -> None:
    (root / "d").mkdir()
    (root / "d" / "x.md").write_text("x")
    sink.wait_event(changed(root / "d" / "x.md"))
    (root / "d").rename(outside / "d")
    sink.wait_event(deleted(root / "d"))


def test_directory_moved_in_asks_for_a_rescan(native: Watcher, root: Path, outside: Path, sink: Sink) -> None:
    (outside / "d").mkdir()
    (outside / "d" / "x.md").write_text("x")
    (outside / "d").rename(root / "d")
    sink.wait_event(rescan(root / "d"))


def test_chmod_is_a_change(native: Watcher, root: Path, sink: Sink) -> None:
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))
    mark = sink.mark()
    (root / "a.md").chmod(0o600)
    sink.wait_for(lambda events: changed(root / "a.md") in events[mark:])


def test_non_recursive_root_ignores_subdirectories(
    root: Path, make_watcher: Callable[..., Watcher], sink: Sink
) -> None:
    (root / "sub").mkdir()
    make_watcher([(root, False)]).start()
    (root / "sub" / "x.md").write_text("not watched")
    (root / "newdir").mkdir()
    (root / "top.md").write_text("watched")
    events = sink.wait_event(changed(root / "top.md"))
    assert all(event.path.parent == root for event in events)
    assert rescan(root / "newdir") not in events


def test_queue_overflow_asks_for_a_rescan(native: Watcher, root: Path, sink: Sink) -> None:
    # A real IN_Q_OVERFLOW needs a lowered fs.inotify.max_queued_events (root, system-wide; the
    # flood test in tests/service/test_hostile.py overflows the real queue). Here the event goes
    # the rest of watchdog's real way: its inotify emitter queues EventsLostEvent on overflow.
    emitters = [e for observer in native._observers.values() for e in observer.emitters]
    assert emitters, "the root is watched natively"
    with structlog.testing.capture_logs() as logs:
        for emitter in emitters:
            emitter.queue_event(EventsLostEvent(str(root), is_directory=True))
        sink.wait_event(rescan(root))
    assert any(entry["event"] == "inotify_overflow" for entry in logs)


def test_dead_observer_is_replaced_and_its_roots_rescanned(native: Watcher, root: Path, sink: Sink) -> None:
    with structlog.testing.capture_logs() as logs:
        native._observers["native"].stop()  # what a crash of watchdog's thread amounts to
        sink.wait_event(rescan(root))
    assert any(entry["event"] == "observer_died" for entry in logs)
    (root / "after.md").write_text("still watched")
    sink.wait_event(changed(root / "after.md"))


# -- falling back to polling --


def test_forced_polling_logs_the_mode(root: Path, make_watcher: Callable[..., Watcher], sink: Sink) -> None:
    watcher = make_watcher([(root, True)], polling=True)
    with structlog.testing.capture_logs() as logs:
        watcher.start()
    assert watcher.polling
    assert {"event": "watch_root_scheduled", "root": str(root), "recursive": True, "mode": "polling"} in [
        {k: v for k, v in entry.items() if k != "log_level"} for entry in logs
    ]
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))


def _limit_warning(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    warnings = [entry for entry in logs if entry["event"] == "inotify_limit_reached"]
    assert len(warnings) == 1, logs
    assert warnings[0]["log_level"] == "warning"
    return warnings[0]


def test_watch_limit_falls_back_to_polling(
    root: Path, make_watcher: Callable[..., Watcher], sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_watches_left(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    native_cls = watcher_mod.Observer  # type: ignore[attr-defined]  # watchdog's, as imported there
    monkeypatch.setattr(native_cls, "schedule", no_watches_left)
    watcher = make_watcher([(root, True)])
    with structlog.testing.capture_logs() as logs:
        watcher.start()
    warning = _limit_warning(logs)
    assert warning["root"] == str(root)
    assert warning["setting"] == "fs.inotify.max_user_watches"
    current = Path("/proc/sys/fs/inotify/max_user_watches")
    assert warning["current"] == (int(current.read_text()) if current.exists() else None)
    assert "sysctl -w fs.inotify.max_user_watches=" in warning["fix"]
    assert any(e["event"] == "watch_root_scheduled" and e["mode"] == "polling" for e in logs)
    assert watcher.modes == {root: "polling"}
    assert watcher.polling
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))


def test_instance_limit_falls_back_to_polling(
    root: Path, make_watcher: Callable[..., Watcher], sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_instances_left() -> None:
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    monkeypatch.setattr(watcher_mod, "Observer", no_instances_left)
    watcher = make_watcher([(root, True)])
    with structlog.testing.capture_logs() as logs:
        watcher.start()
    assert _limit_warning(logs)["setting"] == "fs.inotify.max_user_instances"
    assert watcher.modes == {root: "polling"}
    (root / "a.md").write_text("hello")
    sink.wait_event(changed(root / "a.md"))


def test_tree_larger_than_the_watch_limit_polls_from_the_start(
    root: Path, make_watcher: Callable[..., Watcher], sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        (root / name).mkdir()
    monkeypatch.setattr(watcher_mod, "_read_inotify_setting", lambda name: 3)
    other = root.parent / "small"
    other.mkdir()
    watcher = make_watcher([(root, True), (other, False)])
    with structlog.testing.capture_logs() as logs:
        watcher.start()
    assert "more directories" in _limit_warning(logs)["reason"]
    assert watcher.modes == {root: "polling", other: "native"}
    (root / "b" / "x.md").write_text("x")
    sink.wait_event(changed(root / "b" / "x.md"))


# -- lifecycle --


def test_missing_root_is_watched_once_it_appears(
    tmp_path: Path, make_watcher: Callable[..., Watcher], sink: Sink
) -> None:
    later = tmp_path / "later"
    watcher = make_watcher([(later, True)])
    with structlog.testing.capture_logs() as logs:
        watcher.start()
    assert watcher.modes == {later: None}
    assert any(e["event"] == "watch_root_unavailable" and e["root"] == str(later) for e in logs)
    later.mkdir()
    sink.wait_event(rescan(later))
    (later / "a.md").write_text("hello")
    sink.wait_event(changed(later / "a.md"))


def test_add_and_remove_roots_while_running(
    root: Path, tmp_path: Path, make_watcher: Callable[..., Watcher], sink: Sink
) -> None:
    second = tmp_path / "second"
    second.mkdir()
    watcher = make_watcher([(root, True)])
    watcher.start()
    watcher.add_root(second, True)
    assert watcher.modes == {root: "native", second: "native"}
    (second / "a.md").write_text("hello")
    sink.wait_event(changed(second / "a.md"))
    watcher.remove_root(root)
    assert watcher.modes == {second: "native"}
    mark = sink.mark()
    (root / "ignored.md").write_text("no longer watched")
    (second / "b.md").write_text("still watched")
    sink.wait_event(changed(second / "b.md"))
    assert all(event.path.is_relative_to(second) for event in sink.since(mark))
    watcher.remove_root(root)  # unknown roots are ignored


def test_a_raising_sink_does_not_stop_the_watch(root: Path, tmp_path: Path) -> None:
    seen = Sink()
    calls = 0

    def flaky(event: FileEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("consumer bug")
        seen(event)

    watcher = Watcher([(root, True)], flaky, supervise_interval_s=0.05)
    watcher.start()
    try:
        with structlog.testing.capture_logs() as logs:
            (root / "first.md").write_text("1")
            (root / "second.md").write_text("2")
            seen.wait_event(changed(root / "second.md"))
        assert any(entry["event"] == "event_sink_failed" for entry in logs)
    finally:
        watcher.stop()


def test_stop_joins_every_thread_it_started(root: Path, make_watcher: Callable[..., Watcher]) -> None:
    before = set(threading.enumerate())
    watcher = make_watcher([(root, True)])
    watcher.start()
    watcher.add_root(root.parent / "root", True)  # same root: no-op
    assert set(threading.enumerate()) - before
    watcher.stop()
    assert {t for t in threading.enumerate() if t.is_alive()} - before == set()
    watcher.stop()  # idempotent


def test_start_twice_is_an_error(root: Path, make_watcher: Callable[..., Watcher]) -> None:
    watcher = make_watcher([(root, True)])
    watcher.start()
    with pytest.raises(RuntimeError, match="twice"):
        watcher.start()
