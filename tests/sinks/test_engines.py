"""The same guarantees from every engine: each test runs on Milvus Lite, Qdrant's local mode,
Chroma's PersistentClient, a LanceDB folder, a Milvus server over gRPC and a Chroma server
over HTTP (the ``backend`` fixture). No client is mocked.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from sink_support import AWKWARD, DIMS, Backend, FakeClock, Store, assert_mirrors, make_rows
from structlog.testing import capture_logs

from daemon.errors import SinkError, SinkMismatchError
from daemon.sinks.base import SinkRow, fingerprint_digest
from daemon.sinks.queue import SinkQueue
from daemon.sinks.sync import SinkSyncer, full_sync

# ----- the collection -----


def test_the_collection_is_made_on_first_use_and_accepted_again(backend: Backend, collection: str) -> None:
    sink = backend.sink(collection)
    sink.connect()
    assert sink.connected
    first = sink.incarnation
    assert first
    assert sink.count() == 0
    assert sink.sources() == set()
    assert sink.search(np.ones(DIMS), 3) == []
    sink.close()
    assert not sink.connected
    again = backend.sink(collection)
    again.connect()
    assert again.incarnation == first  # the same collection, found again
    again.close()


def test_a_collection_of_another_dimension_is_refused(backend: Backend, collection: str) -> None:
    made = backend.sink(collection, dims=DIMS)
    made.connect()
    made.close()
    other = backend.sink(collection, dims=DIMS * 2)
    with pytest.raises(
        SinkMismatchError, match=f"holds {DIMS}-dimension vectors, this store {DIMS * 2}"
    ) as info:
        other.connect()
    assert info.value.sink == "mirror"
    assert collection in str(info.value)
    assert not other.connected


def test_a_collection_of_another_fingerprint_is_refused(backend: Backend, collection: str) -> None:
    made = backend.sink(collection)
    made.connect()
    made.close()
    other = backend.sink(collection, fp=fingerprint_digest({"model_sha256": "1" * 64}))
    with pytest.raises(SinkMismatchError, match="made with another model or chunking"):
        other.connect()


def test_a_collection_not_made_by_embedd_is_refused(backend: Backend, collection: str) -> None:
    backend.make_foreign(collection)
    with pytest.raises(SinkMismatchError, match="not made by embedd"):
        backend.sink(collection).connect()


# ----- rows -----


def test_replace_delete_and_rename_leave_the_collection_equal_to_the_store(
    backend: Backend, collection: str
) -> None:
    sink = backend.sink(collection)
    store: Store = {
        "inbox/a.md": make_rows("inbox/a.md", 5, 1),
        "inbox/b.pdf": make_rows("inbox/b.pdf", 7, 2, pages=True),
        "inbox/c.txt": make_rows("inbox/c.txt", 3, 3),
    }
    for source, rows in store.items():
        sink.replace_source(source, rows)
    assert_mirrors(sink, store)

    # An edit that shrinks a file drops its trailing chunks; one that grows it adds them.
    store["inbox/a.md"] = make_rows("inbox/a.md", 2, 11)
    store["inbox/c.txt"] = make_rows("inbox/c.txt", 9, 13)
    sink.apply({s: store[s] for s in ("inbox/a.md", "inbox/c.txt")})
    assert_mirrors(sink, store)

    # Applying the same thing twice changes nothing.
    sink.replace_source("inbox/a.md", store["inbox/a.md"])
    assert_mirrors(sink, store)

    # A rename is the old source deleted and the new one written.
    store["archive/b.pdf"] = [
        SinkRow(r.vector, r.content, "archive/b.pdf", r.page, r.chunk, r.timestamp, r.hash)
        for r in store.pop("inbox/b.pdf")
    ]
    sink.apply({"inbox/b.pdf": None, "archive/b.pdf": store["archive/b.pdf"]})
    assert_mirrors(sink, store)

    # A file that now gives no chunk, and a deleted one, leave no rows.
    store["inbox/c.txt"] = []
    sink.replace_source("inbox/c.txt", [])
    del store["inbox/a.md"]
    sink.delete_source("inbox/a.md")
    sink.delete_source("inbox/never-there.md")
    assert_mirrors(sink, store)
    sink.close()


def test_chunk_positions_need_not_be_contiguous(backend: Backend, collection: str) -> None:
    sink = backend.sink(collection)
    rows = make_rows("s.md", 6, 4)
    sink.replace_source("s.md", rows)
    kept = [rows[0], rows[2], rows[5]]
    sink.replace_source("s.md", kept)
    assert_mirrors(sink, {"s.md": kept})
    with pytest.raises(ValueError, match="same chunk position"):
        sink.replace_source("s.md", [rows[1], rows[1]])
    sink.close()


def test_awkward_file_names_survive_every_operation(backend: Backend, collection: str) -> None:
    sink = backend.sink(collection)
    store: Store = {s: make_rows(s, 2, i) for i, s in enumerate(AWKWARD)}
    store["docs/100%Xdone.md"] = make_rows("docs/100%Xdone.md", 1, 99)  # what an unescaped % would match
    sink.apply(dict(store))
    assert_mirrors(sink, store)
    for source in AWKWARD[:3]:
        sink.delete_source(source)
        del store[source]
        assert_mirrors(sink, store)
    hits = sink.search(store["docs/tab\there.txt"][0].vector, 3, source_prefix="docs/tab\t")
    assert [h.source for h in hits] == ["docs/tab\there.txt"] * 2
    hits = sink.search(store["docs/it's.txt"][0].vector, 5, source_prefix="docs/it'")
    assert {h.source for h in hits} == {"docs/it's.txt"}
    sink.close()


def test_two_daemons_share_a_collection_without_touching_each_others_rows(
    backend: Backend, collection: str
) -> None:
    alpha = backend.sink(collection, daemon="alpha")
    beta = backend.sink(collection, daemon="beta")
    store_a: Store = {
        "inbox/same.md": make_rows("inbox/same.md", 4, 21),
        "inbox/a.md": make_rows("inbox/a.md", 2, 22),
    }
    store_b: Store = {
        "inbox/same.md": make_rows("inbox/same.md", 3, 31),
        "inbox/b.md": make_rows("inbox/b.md", 5, 32),
    }
    alpha.apply(dict(store_a))
    beta.apply(dict(store_b))
    assert_mirrors(alpha, store_a)
    assert_mirrors(beta, store_b)

    # Same source name in both daemons: alpha's edit and delete leave beta's rows alone.
    store_a["inbox/same.md"] = make_rows("inbox/same.md", 1, 23)
    alpha.replace_source("inbox/same.md", store_a["inbox/same.md"])
    assert_mirrors(beta, store_b)
    alpha.delete_source("inbox/same.md")
    del store_a["inbox/same.md"]
    assert_mirrors(alpha, store_a)
    assert_mirrors(beta, store_b)

    # Search spans both daemons unless told otherwise.
    target = store_b["inbox/b.md"][2]
    hits = alpha.search(target.vector, 3)
    assert (hits[0].daemon, hits[0].source, hits[0].chunk) == ("beta", "inbox/b.md", 2)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].id == beta.row_id("inbox/b.md", 2)
    assert all(h.daemon == "alpha" for h in alpha.search(target.vector, 5, daemon="alpha"))

    # A full sync or a wipe of one daemon never touches the other's rows.
    full_sync(alpha, store_a, store_a.get)
    alpha.wipe()
    assert alpha.count() == 0
    assert_mirrors(beta, store_b)
    alpha.close()
    beta.close()


def test_search_with_a_source_prefix(backend: Backend, collection: str) -> None:
    sink = backend.sink(collection)
    store: Store = {
        s: make_rows(s, 3, i) for i, s in enumerate(["a/x.md", "a/sub/y.md", "ab/z.md", "b/w.md", "a/xy.md"])
    }
    sink.apply(dict(store))
    probe = store["b/w.md"][1]
    hits = sink.search(probe.vector, 10, source_prefix="a/")
    assert {h.source for h in hits} == {"a/x.md", "a/sub/y.md", "a/xy.md"}
    assert len(hits) == 9
    assert [h.rank for h in hits] == list(range(1, 10))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # A prefix that ends inside a name, and one that is a whole source.
    assert {h.source for h in sink.search(probe.vector, 10, source_prefix="a/x")} == {"a/x.md", "a/xy.md"}
    assert {h.source for h in sink.search(probe.vector, 10, source_prefix="a/x.md")} == {"a/x.md"}
    assert {h.source for h in sink.search(probe.vector, 10, source_prefix="a")} == {
        "a/x.md",
        "a/sub/y.md",
        "a/xy.md",
        "ab/z.md",
    }
    best = sink.search(probe.vector, 1)[0]
    assert (best.source, best.chunk, best.page, best.content, best.hash) == (
        "b/w.md",
        1,
        None,
        probe.content,
        probe.hash,
    )
    assert best.timestamp == probe.timestamp
    assert sink.search(probe.vector, 5, source_prefix="nothing/") == []
    assert sink.search(probe.vector, 0) == []
    sink.close()


# ----- full sync -----


def test_full_sync_after_a_wipe_restores_exactly_and_a_second_writes_nothing(
    backend: Backend, collection: str
) -> None:
    sink = backend.sink(collection)
    store: Store = {
        s: make_rows(s, 3 + i, i, pages=i % 2 == 0) for i, s in enumerate(["a.md", "b.pdf", *AWKWARD[:3]])
    }
    report = full_sync(sink, store, store.get)
    total = sum(map(len, store.values()))
    assert (report.sources, report.rows, report.deleted, report.complete) == (5, total, 0, True)
    assert_mirrors(sink, store)

    sink.wipe()
    assert sink.count() == 0
    full_sync(sink, store, store.get)
    assert_mirrors(sink, store)

    # Rows the store no longer holds (a deleted file, a shrunk one) go; a row that differs is
    # rewritten; the rest is left as it is, and a second run changes nothing.
    sink.replace_source("gone.md", make_rows("gone.md", 2, 7))
    store["a.md"] = store["a.md"][:1]
    r = store["b.pdf"][1]
    sink.upsert([SinkRow(r.vector, "tampered", r.source, r.page, r.chunk, r.timestamp, "f" * 64)])
    total = sum(map(len, store.values()))
    report = full_sync(sink, store, store.get)
    assert (report.rows, report.unchanged, report.deleted) == (1, total - 1, 2 + 2)
    assert_mirrors(sink, store)
    again = full_sync(sink, store, store.get)
    assert (again.rows, again.unchanged, again.deleted) == (0, total, 0)
    forced = full_sync(sink, store, store.get, rewrite=True)
    assert (forced.rows, forced.unchanged, forced.deleted) == (total, 0, 0)
    assert_mirrors(sink, store)
    sink.close()


# ----- refusals and a collection that goes away -----


def test_a_dropped_collection_is_made_again_and_reloaded_from_the_store(
    backend: Backend, collection: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    sink = backend.sink(collection)
    queue = SinkQueue.open(tmp_path / "q.queue", sink="mirror", clock=clock)
    store: Store = {"a.md": make_rows("a.md", 3, 1), "b.md": make_rows("b.md", 2, 2)}
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=None)
    assert syncer.step() == 2
    assert queue.incarnation == sink.incarnation

    # Someone drops the collection; then a file changes.
    backend.sink(collection).drop()
    store["c.md"] = make_rows("c.md", 1, 3)
    queue.mark(["c.md"])
    with capture_logs() as logs:
        for _ in range(3):  # the first write may fail (the client still knew the old one)
            if syncer.step():
                break
            clock.now += 60
    events = [e["event"] for e in logs]
    assert "sink_collection_replaced" in events, events
    assert queue.pending() == 0 and not queue.full_sync_needed
    assert queue.incarnation == sink.incarnation
    assert_mirrors(sink, store)  # a.md and b.md came back too, without a manual sync
    sink.close()
    queue.close()


def test_a_refused_write_stays_queued_and_does_not_hold_up_another_sink(
    backend: Backend, collection: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    store: Store = {"a.md": make_rows("a.md", 2, 1)}
    broken = backend.sink(collection, name="broken")
    other = backend.sink(collection + "_ok", name="fine")
    syncers = []
    for sink in (broken, other):
        queue = SinkQueue.open(tmp_path / f"{sink.name}.queue", sink=sink.name, clock=clock)
        syncers.append(
            SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=None)
        )
    assert [s.step() for s in syncers] == [1, 1]

    # Under the connected sink, its collection is replaced by one of another dimension.
    backend.sink(collection, name="admin").drop()
    wrong = backend.sink(collection, dims=DIMS * 2, name="admin")
    wrong.connect()
    wrong.close()
    store["a.md"] = make_rows("a.md", 3, 2)
    store["b.md"] = make_rows("b.md", 1, 3)
    for s in syncers:
        s.queue.mark(["a.md", "b.md"])
    with capture_logs() as logs:
        for _ in range(3):
            syncers[0].step()
            clock.now += 60
        assert syncers[1].step() == 2
    errors = [e for e in logs if e["event"] == "sink_error"]
    assert errors and all(e["sink"] == "broken" for e in errors)
    assert f"holds {DIMS * 2}-dimension vectors, this store {DIMS}" in errors[-1]["reason"]
    assert syncers[0].queue.pending() == 2
    assert syncers[0].queue.lag().error == errors[-1]["reason"]
    assert_mirrors(other, store)

    # Once the wrong collection is gone, the sink makes its own and catches up.
    backend.sink(collection, dims=DIMS * 2, name="admin").drop()
    clock.now += 60
    with capture_logs() as logs:
        assert syncers[0].step() == 2
    assert "sink_recovered" in [e["event"] for e in logs]
    assert syncers[0].queue.pending() == 0
    assert_mirrors(broken, store)
    for s in syncers:
        s.sink.close()
        s.queue.close()


def test_the_syncer_drains_the_queue_in_its_thread(backend: Backend, collection: str, tmp_path: Path) -> None:
    sink = backend.sink(collection)
    queue = SinkQueue.open(tmp_path / "q.queue")
    store: Store = {f"f{i}.md": make_rows(f"f{i}.md", 2, i) for i in range(5)}
    lock = threading.Lock()

    def entries_for(source: str) -> list[SinkRow] | None:
        with lock:
            return store.get(source)

    syncer = SinkSyncer(sink, queue, entries_for, lambda: set(store), batch=2)
    stop = threading.Event()
    worker = threading.Thread(target=syncer.run, args=(stop,))
    worker.start()
    try:
        with lock:
            store["f1.md"] = make_rows("f1.md", 5, 50)
            del store["f2.md"]
        queue.mark(["f1.md", "f2.md"])
        for _ in range(1200):
            if not (queue.pending() or queue.full_sync_needed):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert queue.pending() == 0
    assert_mirrors(sink, store)
    sink.close()


def test_an_unreachable_sink_is_a_sink_error(backend: Backend, tmp_path: Path) -> None:
    uri = "http://127.0.0.1:1" if not backend.local and backend.id != "lancedb-local" else None
    if uri is None:
        uri = str(tmp_path / "no-such-folder" / "db")
    sink = backend.sink("embedd", uri=uri, timeout=1.0)
    with pytest.raises(SinkError) as info:
        sink.connect()
    assert info.value.sink == "mirror"
    assert info.value.reason
    assert not sink.connected
