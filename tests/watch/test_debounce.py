"""Debouncer: coalescing and stability rules, driven by a fake clock and a fake stat."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from daemon.watch.debounce import Debouncer, default_stat
from daemon.watch.events import EventKind, FileEvent

Q = 1.0  # quiet_s used throughout
ROOT = Path("/w")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeFs:
    """A stat function over a dict; counts calls so tests can see when stat is skipped."""

    def __init__(self) -> None:
        self.files: dict[Path, tuple[int, int]] = {}
        self.calls = 0

    def write(self, path: Path, size: int) -> None:
        self.files[path] = (size, size * 1000)

    def remove(self, path: Path) -> None:
        self.files.pop(path, None)

    def rename(self, src: Path, dest: Path) -> None:
        self.files[dest] = self.files.pop(src)

    def __call__(self, path: Path) -> tuple[int, int] | None:
        self.calls += 1
        return self.files.get(path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fs() -> FakeFs:
    return FakeFs()


@pytest.fixture
def deb(clock: FakeClock, fs: FakeFs) -> Debouncer:
    return Debouncer(Q, clock=clock, stat=fs)


def changed(name: str) -> FileEvent:
    return FileEvent(EventKind.CHANGED, ROOT / name)


def deleted(name: str) -> FileEvent:
    return FileEvent(EventKind.DELETED, ROOT / name)


def moved(src: str, dest: str) -> FileEvent:
    return FileEvent(EventKind.MOVED, ROOT / src, ROOT / dest)


def rescan(name: str) -> FileEvent:
    return FileEvent(EventKind.RESCAN, ROOT / name if name else ROOT)


def drain(deb: Debouncer, clock: FakeClock, limit: int = 50) -> list[FileEvent]:
    """Advance the clock deadline by deadline until nothing is pending."""
    out: list[FileEvent] = []
    for _ in range(limit):
        deadline = deb.next_deadline()
        if deadline is None:
            return out
        clock.now = max(clock.now, deadline)
        out += deb.due()
    raise AssertionError(f"still pending after {limit} deadlines: {deb.pending()}")


# -- basics --


def test_empty(deb: Debouncer) -> None:
    assert deb.due() == []
    assert deb.next_deadline() is None
    assert deb.pending() == 0


def test_changed_is_due_after_quiet_period(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a.md", 10)
    deb.push(changed("a.md"))
    assert deb.pending() == 1
    assert deb.next_deadline() == clock.now + Q
    clock.advance(Q - 0.25)
    assert deb.due() == []
    clock.advance(0.25)
    assert deb.due() == [changed("a.md")]
    assert deb.pending() == 0
    assert deb.next_deadline() is None


def test_burst_on_one_path_coalesces_to_one_event_after_the_last(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    for size in range(1, 21):
        fs.write(ROOT / "a.md", size)
        deb.push(changed("a.md"))
        clock.advance(Q / 2)  # never quiet for a whole period
        assert deb.due() == []
    last_event = clock.now - Q / 2
    assert deb.pending() == 1
    assert deb.next_deadline() == last_event + Q
    clock.now = last_event + Q
    assert deb.due() == [changed("a.md")]


def test_changed_then_changed_is_one_changed(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a.md", 1)
    deb.push(changed("a.md"))
    deb.push(changed("a.md"))
    assert drain(deb, clock) == [changed("a.md")]


def test_changed_then_deleted_is_deleted(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a.md", 1)
    deb.push(changed("a.md"))
    fs.remove(ROOT / "a.md")
    deb.push(deleted("a.md"))
    assert drain(deb, clock) == [deleted("a.md")]


def test_deleted_then_changed_is_changed_delete_and_recreate(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    fs.write(ROOT / "a.md", 1)
    deb.push(deleted("a.md"))
    clock.advance(Q / 2)
    fs.write(ROOT / "a.md", 2)
    deb.push(changed("a.md"))
    assert drain(deb, clock) == [changed("a.md")]


def test_deleted_needs_no_stat(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    deb.push(deleted("a.md"))
    clock.advance(Q)
    assert deb.due() == [deleted("a.md")]
    assert fs.calls == 0


def test_changed_for_a_file_that_vanished_comes_out_as_deleted(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    deb.push(changed("ghost.md"))  # e.g. a temp file created and removed without a delete event
    assert drain(deb, clock) == [deleted("ghost.md")]


def test_rescan_passes_through_after_quiet(deb: Debouncer, clock: FakeClock) -> None:
    deb.push(rescan(""))
    clock.advance(Q - 0.25)
    assert deb.due() == []
    clock.advance(0.25)
    assert deb.due() == [rescan("")]


def test_rescan_of_a_subdirectory_is_absorbed_by_a_pending_rescan_above(
    deb: Debouncer, clock: FakeClock
) -> None:
    deb.push(rescan("sub/deeper"))
    deb.push(rescan("sub"))  # covers sub/deeper
    deb.push(rescan("sub/other"))  # covered by sub
    assert deb.pending() == 1
    assert drain(deb, clock) == [rescan("sub")]


def test_rescan_and_file_event_for_the_same_path_are_both_kept(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    deb.push(rescan("d"))
    deb.push(deleted("d"))
    assert sorted(e.kind.value for e in drain(deb, clock)) == ["deleted", "rescan"]


# -- stability --


def test_growing_file_is_not_due_until_two_samples_agree(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    path = ROOT / "big.pdf"
    fs.write(path, 100)
    deb.push(changed("big.pdf"))
    # A copy that writes without producing events (e.g. another host on a network share).
    for size in (200, 300, 400):
        fs.write(path, size)
        clock.advance(Q)
        assert deb.due() == []
        assert deb.next_deadline() == clock.now + Q
    clock.advance(Q)  # size stayed 400 for a whole period
    assert deb.due() == [changed("big.pdf")]


def test_growth_seen_late_restarts_the_wait_from_that_sample(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    path = ROOT / "big.pdf"
    fs.write(path, 100)
    deb.push(changed("big.pdf"))
    clock.advance(3 * Q)  # the consumer looked late
    fs.write(path, 150)
    assert deb.due() == []
    assert deb.next_deadline() == clock.now + Q
    clock.advance(Q / 2)
    assert deb.due() == []  # not yet a whole period since the new sample
    clock.advance(Q / 2)
    assert deb.due() == [changed("big.pdf")]


def test_unchanged_file_costs_no_extra_latency(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a.md", 5)
    deb.push(changed("a.md"))
    clock.advance(Q)
    assert deb.due() == [changed("a.md")]
    assert fs.calls == 2  # one sample at push, one when due


# -- temp files and moves --


def test_temp_file_renamed_onto_target_yields_one_event_for_the_target(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    fs.write(ROOT / "foo.md", 1)
    deb.push(changed("foo.md"))  # an earlier save, still pending
    for size in (10, 20, 30):
        fs.write(ROOT / "foo.md.tmp", size)
        deb.push(changed("foo.md.tmp"))
    fs.rename(ROOT / "foo.md.tmp", ROOT / "foo.md")
    deb.push(moved("foo.md.tmp", "foo.md"))
    assert deb.pending() == 1
    # Exactly one event, about foo.md; the temp needs no indexing (a MOVED from a source the
    # consumer never indexed is a change of the destination).
    assert drain(deb, clock) == [moved("foo.md.tmp", "foo.md")]


def test_editor_swap_file_save(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / ".foo.md.swp", 4)
    deb.push(changed(".foo.md.swp"))
    fs.rename(ROOT / ".foo.md.swp", ROOT / "foo.md")
    deb.push(moved(".foo.md.swp", "foo.md"))
    assert drain(deb, clock) == [moved(".foo.md.swp", "foo.md")]


def test_moved_temp_file_still_being_written_waits_for_stability(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    fs.write(ROOT / "part", 10)
    deb.push(changed("part"))
    fs.rename(ROOT / "part", ROOT / "foo.md")
    deb.push(moved("part", "foo.md"))
    fs.write(ROOT / "foo.md", 20)  # the writer kept its descriptor and kept writing
    clock.advance(Q)
    assert deb.due() == []
    clock.advance(Q)
    assert deb.due() == [moved("part", "foo.md")]


def test_plain_rename_needs_no_stat(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "b.md", 1)
    deb.push(moved("a.md", "b.md"))
    calls = fs.calls
    clock.advance(Q)
    assert deb.due() == [moved("a.md", "b.md")]
    assert fs.calls == calls  # only the sample taken at push


def test_move_chain_collapses_and_deletes_the_intermediate(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    fs.write(ROOT / "c.md", 1)
    deb.push(moved("a.md", "b.md"))
    deb.push(moved("b.md", "c.md"))
    events = drain(deb, clock)
    # b's previous content (if any) was overwritten by the first rename: it must go.
    assert events == [moved("a.md", "c.md"), deleted("b.md")]


def test_move_chain_of_a_temp_file(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "t1", 3)
    deb.push(changed("t1"))
    fs.rename(ROOT / "t1", ROOT / "t2")
    deb.push(moved("t1", "t2"))
    fs.rename(ROOT / "t2", ROOT / "foo.md")
    deb.push(moved("t2", "foo.md"))
    assert drain(deb, clock) == [moved("t1", "foo.md"), deleted("t2")]


def test_rename_away_and_back_is_a_recheck(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a.md", 1)
    deb.push(moved("a.md", "b.md"))
    deb.push(moved("b.md", "a.md"))
    assert drain(deb, clock) == [changed("a.md"), deleted("b.md")]


def test_changed_after_move_keeps_the_move_and_waits_for_stability(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    fs.write(ROOT / "b.md", 1)
    deb.push(moved("a.md", "b.md"))
    fs.write(ROOT / "b.md", 2)
    deb.push(changed("b.md"))
    fs.write(ROOT / "b.md", 3)  # still growing after the last event
    clock.advance(Q)
    assert deb.due() == []
    clock.advance(Q)
    assert deb.due() == [moved("a.md", "b.md")]


def test_moved_then_deleted_deletes_both_ends(deb: Debouncer, clock: FakeClock) -> None:
    deb.push(moved("a.md", "b.md"))
    deb.push(deleted("b.md"))
    assert drain(deb, clock) == [deleted("b.md"), deleted("a.md")]


def test_moved_onto_a_pending_move_destination_deletes_the_first_source(
    deb: Debouncer, clock: FakeClock, fs: FakeFs
) -> None:
    fs.write(ROOT / "c.md", 1)
    deb.push(moved("a.md", "c.md"))
    deb.push(moved("b.md", "c.md"))  # c overwritten again: a's content is gone everywhere
    assert drain(deb, clock) == [moved("b.md", "c.md"), deleted("a.md")]


def test_moved_onto_a_pending_change_replaces_it(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "b.md", 1)
    deb.push(changed("b.md"))
    deb.push(moved("a.md", "b.md"))
    assert drain(deb, clock) == [moved("a.md", "b.md")]


def test_new_file_at_old_name_waits_for_the_rename(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    # vim's backup dance: rename foo -> foo~, write a new foo; then foo~ is touched again.
    t0 = clock.now
    fs.write(ROOT / "foo~", 1)
    deb.push(moved("foo", "foo~"))
    clock.now = t0 + 0.125
    fs.write(ROOT / "foo", 2)
    deb.push(changed("foo"))
    clock.now = t0 + 0.375
    deb.push(changed("foo~"))  # pushes the rename's deadline past foo's
    t_rename_due = t0 + 0.375 + Q
    clock.now = t0 + 0.125 + Q  # foo is quiet and stable, the rename is not quiet yet
    assert deb.due() == []  # foo must not reach the store before the rename does
    assert deb.next_deadline() == t_rename_due
    clock.now = t_rename_due
    assert deb.due() == [moved("foo", "foo~"), changed("foo")]


def test_swap_through_a_temp_name_does_not_deadlock(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a", 1)
    fs.write(ROOT / "b", 2)
    deb.push(moved("a", "t"))
    deb.push(moved("b", "a"))
    deb.push(moved("t", "b"))
    events = drain(deb, clock)
    assert set(events) == {moved("b", "a"), moved("a", "b"), deleted("t")}
    assert deb.pending() == 0


def test_directory_move_carries_pending_children(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "d/x.md", 1)
    deb.push(changed("d/x.md"))
    deb.push(deleted("d/gone.md"))
    deb.push(rescan("d/new"))
    deb.push(changed("other.md"))
    fs.rename(ROOT / "d/x.md", ROOT / "e/x.md")
    deb.push(moved("d", "e"))
    assert drain(deb, clock) == [
        deleted("other.md"),  # never written in the fake fs
        moved("d", "e"),
        changed("e/x.md"),
        deleted("e/gone.md"),
        rescan("e/new"),
    ]


def test_rename_inside_a_renamed_directory_follows_it(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "e/y.md", 1)
    deb.push(moved("d/x.md", "d/y.md"))
    deb.push(moved("d", "e"))
    # The directory rename goes first; then the file is renamed at its new place.
    assert drain(deb, clock) == [moved("d", "e"), moved("e/x.md", "e/y.md")]


def test_moves_carry_rescans_along(deb: Debouncer, clock: FakeClock) -> None:
    deb.push(rescan("new"))
    deb.push(moved("new", "renamed"))
    events = drain(deb, clock)
    assert rescan("renamed") in events
    assert rescan("new") not in events


# -- scale and deadlines --


def test_many_paths_come_out_in_arrival_order(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    names = [f"f{i:04d}.md" for i in range(2000)]
    for name in names:
        fs.write(ROOT / name, 1)
        deb.push(changed(name))
    for name in names[::7]:
        deb.push(changed(name))  # repeats coalesce
    assert deb.pending() == len(names)
    clock.advance(Q)
    assert deb.due() == [changed(name) for name in names]
    assert deb.pending() == 0


def test_paths_come_due_one_by_one(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    start = clock.now
    for i in range(5):
        fs.write(ROOT / f"{i}.md", 1)
        deb.push(changed(f"{i}.md"))
        clock.advance(0.125)
    seen = []
    while (deadline := deb.next_deadline()) is not None:
        clock.now = deadline
        seen.append((deadline - start, deb.due()))
    assert seen == [(Q + 0.125 * i, [changed(f"{i}.md")]) for i in range(5)]


def test_next_deadline_tracks_the_earliest_entry(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a", 1)
    fs.write(ROOT / "b", 1)
    t0 = clock.now
    deb.push(changed("a"))
    clock.now = t0 + 0.25
    deb.push(changed("b"))
    assert deb.next_deadline() == t0 + Q
    clock.now = t0 + 0.5
    deb.push(changed("a"))  # a's deadline moves past b's
    assert deb.next_deadline() == t0 + 0.25 + Q
    clock.now = t0 + 0.25 + Q
    assert deb.due() == [changed("b")]
    assert deb.next_deadline() == t0 + 0.5 + Q
    deb.push(deleted("c"))
    assert deb.next_deadline() == t0 + 0.5 + Q
    clock.now = t0 + 0.5 + Q
    assert deb.due() == [changed("a")]
    assert deb.next_deadline() == t0 + 0.25 + 2 * Q
    clock.now = t0 + 0.25 + 2 * Q
    assert deb.due() == [deleted("c")]
    assert deb.next_deadline() is None


def test_next_deadline_is_never_late(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    """Whenever due() would return something, next_deadline() is not after now."""
    fs.write(ROOT / "x", 1)
    script = [changed("x"), moved("x", "y"), changed("y"), deleted("z"), rescan("r"), moved("y", "x")]
    for event in script:
        deb.push(event)
        clock.advance(0.25)
        deadline = deb.next_deadline()
        assert deadline is not None
        if deadline > clock.now:
            assert deb.due() == []
    assert drain(deb, clock)


def test_zero_quiet_period(clock: FakeClock, fs: FakeFs) -> None:
    deb = Debouncer(0.0, clock=clock, stat=fs)
    fs.write(ROOT / "a", 1)
    deb.push(changed("a"))
    assert deb.due() == [changed("a")]


def test_negative_quiet_period_is_rejected() -> None:
    with pytest.raises(ValueError, match="quiet_s"):
        Debouncer(-1.0)


def test_push_is_thread_safe(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    def producer(worker: int) -> None:
        for i in range(500):
            deb.push(changed(f"{worker}/{i % 50}"))
            deb.push(deleted(f"{worker}/gone{i % 10}"))

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert deb.pending() == 4 * 60
    assert len(drain(deb, clock)) == 4 * 60


def test_default_stat_reads_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("hello")
    st = path.stat()
    assert default_stat(path) == (5, st.st_mtime_ns)
    assert default_stat(tmp_path / "missing") is None
    assert default_stat(path / "not-a-dir") is None


def test_moved_event_requires_a_destination() -> None:
    with pytest.raises(ValueError, match="dest"):
        FileEvent(EventKind.MOVED, ROOT / "a")
    with pytest.raises(ValueError, match="dest"):
        FileEvent(EventKind.CHANGED, ROOT / "a", ROOT / "b")


def test_a_rescan_re_reporting_an_unchanged_pending_file_does_not_postpone_it(
    clock: FakeClock, fs: FakeFs
) -> None:
    """A write whose close event was lost (an inotify overflow) waits ``open_quiet_s`` for a close;
    rescans re-reporting the same unchanged file must not restart that wait, or it never ends."""
    deb = Debouncer(Q, clock=clock, stat=fs, open_quiet_s=30.0)
    fs.write(ROOT / "a.txt", 10)
    deb.push(FileEvent(EventKind.CHANGED, ROOT / "a.txt", writer_open=True))
    out: list[FileEvent] = []
    for _ in range(6):  # a rescan every 20 s, more often than open_quiet_s
        clock.advance(20.0)
        out += deb.due()
        if out:
            break
        deb.push(FileEvent(EventKind.CHANGED, ROOT / "a.txt", from_scan=True))
    assert [e.path.name for e in out] == ["a.txt"]
    assert clock.now <= 100.0 + 30.0 + 20.0 + 1e-9


def test_a_real_change_still_restarts_the_quiet_period(deb: Debouncer, clock: FakeClock, fs: FakeFs) -> None:
    fs.write(ROOT / "a.txt", 10)
    deb.push(changed("a.txt"))
    clock.advance(0.9 * Q)
    fs.write(ROOT / "a.txt", 20)
    deb.push(changed("a.txt"))
    clock.advance(0.9 * Q)
    assert deb.due() == []
