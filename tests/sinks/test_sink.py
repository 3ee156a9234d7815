"""What is Milvus's own (filters, Lite files), the durable queue and the syncer, on real Milvus Lite files.

No client is mocked: every sink talks to a Milvus Lite server pymilvus starts in this
process from a ``.db`` folder in a temp dir. Most tests share one file (a module-scoped
"keeper" sink holds its server open, ~0.2 s per start) and use a collection of their own.
The store is stood in for by a dict of rows: what matters here is that the collection
ends up equal to it, row for row.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sink_support import DIMS, FP, FakeClock, Store, assert_mirrors, make_rows
from structlog.testing import capture_logs

from daemon.config import SinkConfig
from daemon.errors import ConfigError, SinkError
from daemon.sinks.base import SinkRow, fingerprint_digest, row_id
from daemon.sinks.milvus import MilvusSink, prefix_filter, quote
from daemon.sinks.queue import Backoff, SinkQueue, queue_path
from daemon.sinks.sync import SinkSyncer, full_sync

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


def settings(uri: Path | str, collection: str, name: str = "mirror") -> SinkConfig:
    return SinkConfig(name=name, type="milvus", uri=str(uri), collection=collection)


def make_sink(
    uri: Path | str,
    collection: str,
    *,
    daemon: str = "alpha",
    fp: str = FP,
    dims: int = DIMS,
    timeout: float = 5.0,
) -> MilvusSink:
    return MilvusSink(
        settings(uri, collection), daemon=daemon, dimensions=dims, fingerprint=fp, timeout_s=timeout
    )


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Milvus Lite file for the module, its in-process server kept up by an open sink."""
    db = tmp_path_factory.mktemp("milvus") / "shared.db"
    keeper = make_sink(db, "keeper")
    keeper.connect()
    yield db
    keeper.close()


@pytest.fixture
def collection(request: pytest.FixtureRequest) -> str:
    return "c_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:60]


# ----- filter strings -----


def test_quote_escapes_what_milvus_literals_need() -> None:
    assert quote('a"b\\c\nd\te\r') == '"a\\"b\\\\c\\nd\\te\\r"'
    assert quote("100%_x'y") == '"100%_x\'y"'


def test_prefix_filter_is_a_code_point_range() -> None:
    assert prefix_filter("source", "docs/") == 'source >= "docs/" and source < "docs0"'
    assert prefix_filter("source", "a\U0010ffff") == 'source >= "a\U0010ffff" and source < "b"'
    assert prefix_filter("source", "\U0010ffff") == 'source >= "\U0010ffff"'
    assert prefix_filter("source", "a\ud7ff") == 'source >= "a\ud7ff" and source < "a\ue000"'


def test_fingerprint_digest_and_row_ids_are_stable() -> None:
    a = fingerprint_digest({"pooling": "mean", "model_sha256": "ab"})
    assert a == fingerprint_digest({"model_sha256": "ab", "pooling": "mean"})
    assert a != fingerprint_digest({"model_sha256": "ab", "pooling": "cls"})
    assert row_id("alpha", "a.md", 0) == row_id("alpha", "a.md", 0)
    assert len({row_id("alpha", "a.md", 0), row_id("beta", "a.md", 0), row_id("alpha", "a.md", 1)}) == 3


def test_daemon_name_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"daemon\.name"):
        make_sink("/nowhere/x.db", "c", daemon=" ")
    with pytest.raises(ConfigError, match="256 bytes"):
        make_sink("/nowhere/x.db", "c", daemon="x" * 257)


# ----- the collection -----


def test_collection_is_created_on_first_use_with_the_store_dimension(
    shared_db: Path, collection: str
) -> None:
    from pymilvus import MilvusClient  # type: ignore[import-untyped]

    sink = make_sink(shared_db, collection, dims=DIMS)
    sink.connect()
    client = MilvusClient(str(shared_db))
    try:
        desc = client.describe_collection(collection)
        fields = {f["name"]: f for f in desc["fields"]}
        assert set(fields) == {
            "id",
            "vector",
            "content",
            "source",
            "page",
            "chunk",
            "timestamp",
            "hash",
            "daemon",
        }
        assert int(fields["vector"]["params"]["dim"]) == DIMS
        assert desc["properties"]["embedd.fingerprint"] == FP
        index = client.describe_index(collection, client.list_indexes(collection, field_name="vector")[0])
        assert index["metric_type"] == "COSINE"
    finally:
        client.close()
    assert sink.count() == 0
    assert sink.sources() == set()
    sink.close()
    # A second start finds the collection and accepts it.
    again = make_sink(shared_db, collection)
    again.connect()
    again.close()


# ----- rows -----


def test_long_content_is_cut_at_a_character_boundary_with_a_warning(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    row = make_rows("big.txt", 1, 5)[0]
    long_row = SinkRow(row.vector, "é" * 40_000, "big.txt", None, 0, row.timestamp, row.hash)
    with capture_logs() as logs:
        sink.replace_source("big.txt", [long_row])
    (got,) = sink.rows_for("big.txt")
    assert got.content == "é" * 32_767  # 65,535 bytes hold 32,767 two-byte characters
    assert any(e["event"] == "sink_content_truncated" and e["bytes"] == 80_000 for e in logs)


def test_scans_page_through_a_query_iterator_on_a_server(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    store: Store = {f"f{i}.md": make_rows(f"f{i}.md", 3, i) for i in range(900)}  # 2,700 rows: 3 pages
    full_sync(sink, store, store.get)
    sink._scan_in_one_query = False  # the path a Milvus server takes, checked against Lite
    sink._query_max = 1000  # a server answers at most 16,384 rows a query: then it iterates
    assert sink.sources() == set(store)
    assert len(sink.digests()) == 2700
    assert [r.chunk for r in sink.rows_for("f5.md")] == [0, 1, 2]


# ----- an unavailable sink -----


def test_a_missing_folder_or_a_non_folder_is_a_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="is missing"):
        make_sink(tmp_path / "nope" / "x.db", "c").connect()
    (tmp_path / "file.db").write_text("not milvus")
    with pytest.raises(SinkError, match="must be a folder"):
        make_sink(tmp_path / "file.db", "c").connect()


def test_a_lite_file_open_in_another_process_is_a_sink_error(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    sink = make_sink(db, "c")
    sink.connect()
    sink.close()  # the last user: the server stops and frees the folder's lock
    fd = os.open(db / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process holding the file would
        with pytest.raises(SinkError, match="open in another process"):
            sink.connect()
    finally:
        os.close(fd)
    sink.connect()
    sink.close()


def test_a_closed_sink_reconnects_by_itself(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    sink.replace_source("a.md", make_rows("a.md", 2, 1))
    sink.close()
    assert not sink.connected
    assert sink.count() == 2


def test_while_the_sink_file_is_unavailable_changes_queue_and_nothing_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "flaky.db"
    aside = tmp_path / "flaky.db.aside"
    clock = FakeClock()
    sink = make_sink(db, "docs")
    queue = SinkQueue.open(queue_path(tmp_path / "store.json", "mirror"), sink="mirror", clock=clock)
    store: Store = {"a.md": make_rows("a.md", 3, 1), "b.md": make_rows("b.md", 2, 2)}
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=None)
    assert syncer.step() == 2  # the first step loads the whole (new) sink
    assert_mirrors(sink, store)

    # The sink goes away: its server stops and the file is replaced by something unusable.
    sink.close()
    db.rename(aside)
    db.write_text("gone")
    store["a.md"] = make_rows("a.md", 1, 3)
    store["c.md"] = make_rows("c.md", 4, 4)
    del store["b.md"]
    queue.mark(["a.md", "c.md", "b.md"])
    with capture_logs() as logs:
        assert syncer.step() == 0
    (err,) = [e for e in logs if e["event"] == "sink_error"]
    assert err["sink"] == "mirror"
    assert "must be a folder" in err["reason"]
    assert err["retry_in_s"] == 1.0
    assert queue.pending() == 3
    assert queue.lag().error == err["reason"]

    # Backing off: nothing is tried until the delay has passed; then it fails again, longer.
    assert syncer.step() == 0
    clock.now += 1.0
    with capture_logs() as logs:
        syncer.step()
    assert [e["retry_in_s"] for e in logs if e["event"] == "sink_error"] == [2.0]

    # A restart meanwhile loses nothing: the queue is on disk.
    queue.close()
    queue = SinkQueue.open(queue_path(tmp_path / "store.json", "mirror"), sink="mirror", clock=clock)
    assert set(queue.take()) == {"a.md", "b.md", "c.md"}
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=None)

    # The sink comes back.
    db.unlink()
    aside.rename(db)
    assert syncer.step() == 3
    assert queue.pending() == 0
    assert queue.lag().error is None
    assert_mirrors(sink, store)
    queue.close()
    sink.close()


def test_the_syncer_recovers_and_says_so(tmp_path: Path) -> None:
    db = tmp_path / "later.db"
    clock = FakeClock()
    sink = make_sink(tmp_path / "not-yet" / "later.db", "docs")
    queue = SinkQueue.open(tmp_path / "q.queue", clock=clock)
    store: Store = {"a.md": make_rows("a.md", 2, 1)}
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=None)
    with capture_logs() as logs:
        assert syncer.step() == 0
    assert [e["event"] for e in logs if e["event"].startswith("sink_")] == [
        "sink_full_sync_started",
        "sink_error",
    ]
    assert queue.full_sync_needed
    (tmp_path / "not-yet").mkdir()
    assert db.parent.is_dir()
    clock.now += 1.0
    with capture_logs() as logs:
        assert syncer.step() == 1
    assert any(e["event"] == "sink_recovered" for e in logs)
    assert not queue.full_sync_needed
    assert syncer.status().failures == 0
    assert_mirrors(sink, store)
    sink.close()


def test_an_idle_lite_sink_frees_its_file(tmp_path: Path) -> None:
    db = tmp_path / "idle.db"
    clock = FakeClock()
    sink = make_sink(db, "docs")
    queue = SinkQueue.open(tmp_path / "q.queue", clock=clock)
    store: Store = {"a.md": make_rows("a.md", 2, 1)}
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store), clock=clock, release_idle_s=5.0)
    assert syncer.step() == 1
    assert sink.connected
    syncer.step()
    assert sink.connected
    clock.now += 5.0
    syncer.step()
    assert not sink.connected
    fd = os.open(db / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process could open the file now
    finally:
        os.close(fd)
    queue.mark(["a.md"])
    assert syncer.step() == 1
    assert sink.connected
    sink.close()


def test_a_failing_source_is_retried_without_holding_up_the_others(
    shared_db: Path, collection: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    sink = make_sink(shared_db, collection)
    queue = SinkQueue.open(tmp_path / "q.queue", clock=clock)
    queue.set_full_sync_needed(False)
    store: Store = {"bad.md": make_rows("bad.md", 1, 1), "good.md": make_rows("good.md", 2, 2)}
    broken = {"bad.md"}

    def entries_for(source: str) -> list[SinkRow] | None:
        if source in broken:
            raise KeyError(source)  # a bug on the store side
        return store.get(source)

    syncer = SinkSyncer(sink, queue, entries_for, lambda: set(store), clock=clock, batch=1)
    queue.mark(["bad.md", "good.md"])
    with capture_logs() as logs:
        assert syncer.step() == 0
    failures = [e for e in logs if e["event"] in ("sink_step_failed", "sink_error")]
    assert [e["event"] for e in failures] == ["sink_step_failed", "sink_error"]
    assert failures[1]["reason"] == "KeyError: 'bad.md'"
    clock.now += 1.0
    assert syncer.step() == 1  # good.md went first this time
    assert queue.take() == ["bad.md"]
    broken.clear()
    assert syncer.step() == 1
    assert_mirrors(sink, store)


def test_one_bad_source_in_a_full_batch_does_not_hold_back_the_others(
    shared_db: Path, collection: str, tmp_path: Path
) -> None:
    """With the default batch every pending source is taken together; after the batch fails
    it is retried by halves until the bad one is alone and goes to the back, so all the others
    get through (found in review)."""
    clock = FakeClock()
    sink = make_sink(shared_db, collection)
    queue = SinkQueue.open(tmp_path / "q.queue", clock=clock)
    queue.set_full_sync_needed(False)
    names = [f"doc{i}.md" for i in range(5)]
    store: Store = {n: make_rows(n, 2, i) for i, n in enumerate(names)}
    broken = {"doc2.md"}

    def entries_for(source: str) -> list[SinkRow] | None:
        if source in broken:
            raise KeyError(source)
        return store.get(source)

    syncer = SinkSyncer(sink, queue, entries_for, lambda: set(store), clock=clock)
    queue.mark(names)
    assert syncer.step() == 0  # the whole batch failed
    applied = 0
    for _ in range(20):
        clock.now += 120.0  # past any backoff
        applied += syncer.step()
        if queue.pending() == 1:
            break
    assert applied == 4 and queue.take() == ["doc2.md"]
    assert sink.sources() == set(names) - broken
    broken.clear()
    clock.now += 120.0
    assert syncer.step() == 1 and queue.pending() == 0
    assert_mirrors(sink, store)
    assert syncer.step() == 0


# ----- full sync -----


def test_syncer_full_sync_clears_the_queue(shared_db: Path, collection: str, tmp_path: Path) -> None:
    sink = make_sink(shared_db, collection)
    queue = SinkQueue.open(tmp_path / "q.queue")
    store: Store = {"a.md": make_rows("a.md", 2, 1), "b.md": make_rows("b.md", 1, 2)}
    queue.mark(["a.md", "zombie.md"])
    syncer = SinkSyncer(sink, queue, store.get, lambda: set(store))
    report = syncer.full_sync()
    assert report.complete
    assert queue.pending() == 0
    assert not queue.full_sync_needed
    assert_mirrors(sink, store)


def test_a_stopped_full_sync_leaves_the_queue_as_it_was(
    shared_db: Path, collection: str, tmp_path: Path
) -> None:
    sink = make_sink(shared_db, collection)
    queue = SinkQueue.open(tmp_path / "q.queue")
    store: Store = {"a.md": make_rows("a.md", 2, 1)}
    stop = threading.Event()
    stop.set()
    report = SinkSyncer(sink, queue, store.get, lambda: set(store)).full_sync(stop)
    assert not report.complete
    assert queue.full_sync_needed


# ----- the queue -----


def test_queue_survives_reopen_and_keeps_first_mark_times(tmp_path: Path) -> None:
    path = queue_path(tmp_path / "store.json", "my/sink")
    assert path.name == "store.json.sink-my%2Fsink.queue"
    clock = FakeClock(100.0)
    q = SinkQueue.open(path, clock=clock)
    assert q.created and q.full_sync_needed
    q.set_full_sync_needed(False)
    q.mark(["a", "b"])
    clock.now = 110.0
    q.mark(["b", "c"])
    q.done(q.take(1))  # "a"
    q.close()

    q = SinkQueue.open(path, clock=clock)
    assert not q.created and not q.full_sync_needed
    assert q.take() == ["b", "c"]
    assert q.oldest_age_s(now=130.0) == 30.0
    lag = SinkQueue.read_lag(path, now=130.0)
    assert lag is not None
    assert (lag.pending, lag.oldest_age_s, lag.full_sync, lag.error) == (2, 30.0, False, None)
    q.close()
    assert SinkQueue.read_lag(tmp_path / "none.queue") is None


def test_the_collection_incarnation_survives_reopen_and_compaction(tmp_path: Path) -> None:
    path = tmp_path / "q"
    q = SinkQueue.open(path)
    assert q.incarnation is None
    q.set_incarnation("abc")
    q.close()
    q = SinkQueue.open(path)
    assert q.incarnation == "abc"
    for i in range(200):  # enough lines to rewrite the journal
        q.mark([f"s{i % 5}"])
        q.done(q.take())
    q.set_incarnation("def")
    q.close()
    assert SinkQueue.open(path).incarnation == "def"


def test_a_source_marked_again_after_take_stays_pending(tmp_path: Path) -> None:
    q = SinkQueue.open(tmp_path / "q")
    q.mark(["a", "b"])
    taken = q.take()
    q.mark(["a"])  # changed again while the sink was being written
    q.done(taken)
    assert q.take() == ["a"]
    q.close()
    q = SinkQueue.open(tmp_path / "q")
    assert q.take() == ["a"]


def test_defer_moves_a_source_to_the_back(tmp_path: Path) -> None:
    q = SinkQueue.open(tmp_path / "q")
    q.mark(["poison", "b", "c"])
    q.defer(q.take(1))
    assert q.take() == ["b", "c", "poison"]


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "q"
    q = SinkQueue.open(path)
    q.mark(["a"])
    q.close()
    with path.open("ab") as f:
        f.write(b'{"mark": ["b"')  # a crash mid-append
    with capture_logs() as logs:
        q = SinkQueue.open(path)
    assert q.take() == ["a"]
    assert [e["event"] for e in logs] == ["sink_queue_torn"]
    q.mark(["c"])
    q.close()
    assert SinkQueue.open(path).take() == ["a", "c"]


def test_the_journal_is_compacted(tmp_path: Path) -> None:
    path = tmp_path / "q"
    q = SinkQueue.open(path)
    for i in range(2000):
        q.mark([f"s{i % 7}"])
        q.done(q.take())
    q.mark(["left"])
    assert len(path.read_bytes().splitlines()) < 300
    q.close()
    assert SinkQueue.open(path).take() == ["left"]


def test_errors_are_recorded_for_status(tmp_path: Path) -> None:
    clock = FakeClock(50.0)
    q = SinkQueue.open(tmp_path / "q", clock=clock)
    q.note_error("connection refused")
    clock.now = 60.0
    q.note_error("still refused")
    lag = SinkQueue.read_lag(tmp_path / "q")
    assert lag is not None
    assert (lag.error, lag.error_since) == ("still refused", 50.0)
    q.note_error(None)
    lag = SinkQueue.read_lag(tmp_path / "q")
    assert lag is not None
    assert (lag.error, lag.error_since) == (None, None)


def test_an_unreadable_queue_is_a_sink_error(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    with pytest.raises(SinkError, match="cannot read the queue"):
        SinkQueue.open(tmp_path / "q", sink="mirror")


# ----- backoff -----


def test_backoff_doubles_up_to_the_cap_and_resets_on_success() -> None:
    clock = FakeClock(0.0)
    b = Backoff(clock, base=1.0, cap=60.0)
    assert b.ready()
    delays = [b.failed() for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert not b.ready()
    assert b.wait_s() == 60.0
    clock.now = 59.9
    assert not b.ready()
    clock.now = 60.0
    assert b.ready()
    b.succeeded()
    assert b.ready() and b.failures == 0
    assert b.failed() == 1.0
