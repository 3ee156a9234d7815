"""The Milvus sink, its durable queue and the syncer, against real Milvus Lite database files.

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

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.config import SinkConfig
from daemon.errors import ConfigError, SinkError, SinkMismatchError
from daemon.sinks.base import SinkRow, fingerprint_digest, row_id
from daemon.sinks.milvus import MilvusSink, prefix_filter, quote
from daemon.sinks.queue import Backoff, SinkQueue, queue_path
from daemon.sinks.sync import SinkSyncer, full_sync

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

DIMS = 16
FP = fingerprint_digest({"model_sha256": "0" * 64, "pooling": "mean", "normalize": True, "chunk_size": 500})
# File names that break naive filter strings: quotes, backslashes, LIKE wildcards, newlines.
AWKWARD = [
    'docs/say "hi".md',
    "docs/back\\slash.txt",
    "docs/100%_done.md",
    "docs/it's.txt",
    "docs/tab\there.txt",
    "docs/new\nline.txt",
    "docs/ünïcødé ✓.md",
]

Store = dict[str, list[SinkRow]]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_rows(source: str, n: int, seed: int, *, pages: bool = False, start: int = 0) -> list[SinkRow]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        SinkRow(
            vector=vecs[i],
            content=f"chunk {start + i} of {source} (seed {seed})",
            source=source,
            page=(i // 2 + 1) if pages else None,
            chunk=start + i,
            timestamp=1_700_000_000_000 + seed * 1000 + i,
            hash=f"{seed:08x}{i:056x}",
        )
        for i in range(n)
    ]


def settings(uri: Path | str, collection: str, name: str = "mirror") -> SinkConfig:
    return SinkConfig(name=name, type="milvus", uri=str(uri), collection=collection, token="")


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


def assert_mirrors(sink: MilvusSink, store: Store) -> None:
    """The sink holds exactly the store's rows for its daemon, field for field."""
    expected = {s for s, rows in store.items() if rows}
    assert sink.sources() == expected
    assert sink.count() == sum(len(rows) for rows in store.values())
    for source in expected:
        got = sink.rows_for(source)
        want = sorted(store[source], key=lambda r: r.chunk)
        assert [g["id"] for g in got] == [row_id(sink.daemon, source, r.chunk) for r in want]
        for g, w in zip(got, want, strict=True):
            assert (
                g["source"],
                g["chunk"],
                g["page"],
                g["content"],
                g["hash"],
                g["timestamp"],
                g["daemon"],
            ) == (
                w.source,
                w.chunk,
                w.page,
                w.content,
                w.hash,
                w.timestamp,
                sink.daemon,
            )
            np.testing.assert_allclose(g["vector"], w.vector, rtol=1e-6)


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


def test_a_collection_of_another_dimension_is_refused(shared_db: Path, collection: str) -> None:
    make_sink(shared_db, collection, dims=DIMS).connect()
    other = make_sink(shared_db, collection, dims=DIMS * 2)
    with pytest.raises(
        SinkMismatchError, match=f"holds {DIMS}-dimension vectors, this store {DIMS * 2}"
    ) as info:
        other.connect()
    assert info.value.sink == "mirror"
    assert collection in str(info.value)
    assert not other.connected


def test_a_collection_of_another_fingerprint_is_refused(shared_db: Path, collection: str) -> None:
    make_sink(shared_db, collection).connect()
    other = make_sink(shared_db, collection, fp=fingerprint_digest({"model_sha256": "1" * 64}))
    with pytest.raises(SinkMismatchError, match="another model or chunking"):
        other.connect()


def test_a_collection_not_made_by_embedd_is_refused(shared_db: Path, collection: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(str(shared_db))
    client.create_collection(collection, dimension=DIMS)
    client.close()
    with pytest.raises(SinkMismatchError, match="not made by embedd"):
        make_sink(shared_db, collection).connect()


# ----- rows -----


def test_replace_delete_and_rename_leave_the_collection_equal_to_the_store(
    shared_db: Path, collection: str
) -> None:
    sink = make_sink(shared_db, collection)
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


def test_chunk_positions_need_not_be_contiguous(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    rows = make_rows("s.md", 6, 4)
    sink.replace_source("s.md", rows)
    kept = [rows[0], rows[2], rows[5]]
    sink.replace_source("s.md", kept)
    assert_mirrors(sink, {"s.md": kept})
    with pytest.raises(ValueError, match="same chunk position"):
        sink.replace_source("s.md", [rows[1], rows[1]])


def test_awkward_file_names_survive_every_operation(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
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


def test_long_content_is_cut_at_a_character_boundary_with_a_warning(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    row = make_rows("big.txt", 1, 5)[0]
    long_row = SinkRow(row.vector, "é" * 40_000, "big.txt", None, 0, row.timestamp, row.hash)
    with capture_logs() as logs:
        sink.replace_source("big.txt", [long_row])
    (got,) = sink.rows_for("big.txt")
    assert got["content"] == "é" * 32_767  # 65,535 bytes hold 32,767 two-byte characters
    assert any(e["event"] == "sink_content_truncated" and e["bytes"] == 80_000 for e in logs)


def test_two_daemons_share_a_collection_without_touching_each_others_rows(
    shared_db: Path, collection: str
) -> None:
    alpha = make_sink(shared_db, collection, daemon="alpha")
    beta = make_sink(shared_db, collection, daemon="beta")
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
    assert all(h.daemon == "alpha" for h in alpha.search(target.vector, 5, daemon="alpha"))

    # A full sync or a wipe of one daemon never touches the other's rows.
    full_sync(alpha, store_a, store_a.get)
    alpha.wipe()
    assert alpha.count() == 0
    assert_mirrors(beta, store_b)


def test_scans_page_through_a_query_iterator_on_a_server(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    store: Store = {f"f{i}.md": make_rows(f"f{i}.md", 3, i) for i in range(900)}  # 2,700 rows: 3 pages
    full_sync(sink, store, store.get)
    sink._scan_in_one_query = False  # the path a Milvus server takes, checked against Lite
    assert sink.sources() == set(store)
    assert len(sink.digests()) == 2700
    assert [r["chunk"] for r in sink.rows_for("f5.md")] == [0, 1, 2]


def test_search_with_a_source_prefix(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    store: Store = {
        s: make_rows(s, 3, i) for i, s in enumerate(["a/x.md", "a/sub/y.md", "ab/z.md", "b/w.md"])
    }
    sink.apply(dict(store))
    probe = store["b/w.md"][1]
    hits = sink.search(probe.vector, 10, source_prefix="a/")
    assert {h.source for h in hits} == {"a/x.md", "a/sub/y.md"}
    assert len(hits) == 6
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    best = sink.search(probe.vector, 1)[0]
    assert (best.source, best.chunk, best.page, best.content) == ("b/w.md", 1, None, probe.content)
    assert sink.search(probe.vector, 5, source_prefix="nothing/") == []
    assert sink.search(probe.vector, 0) == []


# ----- an unavailable sink -----


def test_a_uri_that_cannot_connect_is_a_sink_error() -> None:
    sink = make_sink("http://127.0.0.1:1", "embedd", timeout=1.0)
    with pytest.raises(SinkError, match=r"sink mirror: connect failed") as info:
        sink.connect()
    assert info.value.reason


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
    assert [e["event"] for e in logs] == ["sink_step_failed", "sink_error"]
    assert logs[1]["reason"] == "KeyError: 'bad.md'"
    clock.now += 1.0
    assert syncer.step() == 1  # good.md went first this time
    assert queue.take() == ["bad.md"]
    broken.clear()
    assert syncer.step() == 1
    assert_mirrors(sink, store)


def test_run_drains_the_queue_until_stopped(shared_db: Path, collection: str, tmp_path: Path) -> None:
    sink = make_sink(shared_db, collection)
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
        deadline = 60.0
        waited = 0.0
        while (queue.pending() or queue.full_sync_needed) and waited < deadline:
            stop.wait(0.05)
            waited += 0.05
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert queue.pending() == 0
    assert_mirrors(sink, store)


# ----- full sync -----


def test_full_sync_after_a_wipe_restores_exactly(shared_db: Path, collection: str) -> None:
    sink = make_sink(shared_db, collection)
    store: Store = {
        s: make_rows(s, 3 + i, i, pages=i % 2 == 0) for i, s in enumerate(["a.md", "b.pdf", *AWKWARD])
    }
    report = full_sync(sink, store, store.get)
    assert (report.sources, report.rows, report.deleted, report.complete) == (
        9,
        sum(map(len, store.values())),
        0,
        True,
    )
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
