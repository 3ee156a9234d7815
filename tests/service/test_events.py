"""The events feed's ring buffer alone: increasing ids, bounded memory, gaps a client can see."""

from __future__ import annotations

import asyncio
import threading

import pytest

from daemon.service.events import EventLog
from daemon.service.notices import Notices


def test_ids_increase_and_a_reader_gets_what_came_after_its_id() -> None:
    log = EventLog(capacity=10, clock=lambda: 1_765_000_000.5)
    notices = Notices()
    notices.listen(log)
    notices.notify("file_indexed", source="a.txt", chunks=2)
    notices.notify("file_removed", source="b.txt", reason="deleted")
    page = log.after(0)
    assert [(e.id, e.type) for e in page.events] == [(1, "file_indexed"), (2, "file_removed")]
    assert page.events[0].to_json() == {
        "id": 1,
        "time": "2025-12-06T05:46:40.500Z",
        "type": "file_indexed",
        "data": {"source": "a.txt", "chunks": 2},
    }
    assert (page.last_id, page.missed) == (2, 0)
    assert [e.id for e in log.after(1).events] == [2]
    assert log.after(2).events == ()
    assert [e.id for e in log.after(0, limit=1).events] == [1]


def test_the_buffer_is_bounded_and_a_reader_left_behind_sees_the_gap() -> None:
    log = EventLog(capacity=5)
    for i in range(12):
        log("file_indexed", {"n": i})
    page = log.after(3)
    # Ids 4..7 were dropped: the reader learns it lost 4, and the ids jump from 3 to 8.
    assert page.missed == 4
    assert [e.id for e in page.events] == [8, 9, 10, 11, 12]
    assert log.after(7).missed == 0
    assert log.after(0).missed == 7
    # An id from a previous run of the daemon (above the last one) reads from the start.
    assert [e.id for e in log.after(99).events] == [8, 9, 10, 11, 12]


def test_a_waiting_reader_is_woken_by_a_notice_from_another_thread() -> None:
    log = EventLog()

    async def main() -> int:
        waiter = asyncio.ensure_future(log.wait(0, timeout=60))
        await asyncio.sleep(0)
        threading.Thread(target=log, args=("store_saved", {"entries": 3})).start()
        await waiter
        return log.last_id

    assert asyncio.run(main()) == 1


def test_wait_returns_after_its_timeout_when_nothing_happens() -> None:
    log = EventLog()
    asyncio.run(log.wait(0, timeout=0.01))
    assert log.last_id == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EventLog(capacity=0)
