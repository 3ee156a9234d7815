"""The JSON store on real files: format, round trips, incremental saves, locking, recovery."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.errors import FingerprintMismatchError, StoreCorruptError, StoreError, StoreLockedError
from daemon.store.cache import cache_path
from daemon.store.format import content_hash
from daemon.store.store import FileState, Fingerprint, NewEntry, Store, lock_path

DIMS = 8
MODEL = "all-MiniLM-L6-v2"
FP = Fingerprint("ab" * 32, "mean", True, 500, 50)
TOP_KEYS = [
    "version",
    "model",
    "dimensions",
    "count",
    "created",
    "updated",
    "fingerprint",
    "files",
    "embeddings",
]


def make_entries(
    source: str, n: int, *, seed: int = 0, tag: str = "", page: int | None = None
) -> list[NewEntry]:
    rng = np.random.default_rng(zlib.crc32(f"{source}|{seed}|{tag}".encode()))
    out = []
    for i in range(n):
        text = f"{source} chunk {i} {tag}"
        vec = rng.standard_normal(DIMS).astype(np.float32)
        out.append(NewEntry(text, page, i, content_hash(text), vec, 1_764_100_000_000 + i))
    return out


def state(n: int = 1) -> FileState:
    return FileState(size=100 + n, mtime_ns=1_764_100_000_000_000_000 + n, inode=40 + n)


def open_store(path: Path, **kw: object) -> Store:
    return Store.open(path, model=MODEL, dimensions=DIMS, fingerprint=FP, **kw)  # type: ignore[arg-type]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def snapshot(store: Store) -> list[tuple[object, ...]]:
    return [
        (e.id, e.content, e.source, e.page, e.chunk, e.hash, e.timestamp, bits(e.vector).tobytes())
        for e in store.iter_entries()
    ]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "embeddings.json"


@pytest.fixture
def filled(path: Path) -> Iterator[Store]:
    """A saved store of five sources, three chunks each."""
    store = open_store(path)
    for k in range(5):
        store.replace_source(f"inbox/f{k}.txt", make_entries(f"inbox/f{k}.txt", 3), state(k))
    store.save()
    yield store
    store.close()


# ----- format and round trips -----


def test_round_trip_keeps_vectors_bit_for_bit_and_metadata(path: Path) -> None:
    store = open_store(path)
    pdf = make_entries("inbox/report.pdf", 4, page=3)
    txt = make_entries("notes/a.md", 2)
    store.replace_source("inbox/report.pdf", pdf, state(1))
    store.replace_source("notes/a.md", txt, state(2))
    store.replace_source("empty.txt", [], state(3))  # a file that gave no chunk is still known
    store.save()
    before = snapshot(store)
    store.close()

    for drop_cache in (False, True):
        if drop_cache:
            cache_path(path).unlink()
        again = open_store(path)
        assert again.loaded_via == ("parse" if drop_cache else "cache")
        assert not again.dirty
        assert snapshot(again) == before
        assert again.sources() == {"inbox/report.pdf", "notes/a.md", "empty.txt"}
        assert again.file_state("empty.txt") == state(3)
        assert again.file_state("inbox/report.pdf") == state(1)
        assert [c.page for c in again.entries_for("inbox/report.pdf")] == [3, 3, 3, 3]
        assert [c.chunk for c in again.entries_for("notes/a.md")] == [0, 1]
        assert bits(again.matrix()).tobytes() == b"".join(row[-1] for row in before)  # type: ignore[misc]
        again.close()

    readonly = Store.open_readonly(path)
    assert snapshot(readonly) == before
    assert readonly.fingerprint == FP


def test_output_is_one_json_document_in_the_documented_format(path: Path) -> None:
    store = open_store(path)
    tricky = 'quote " backslash \\ newline \n tab \t "embedding":[1,2] ],"timestamp":5 \u2028 ü 日本 🙂'
    vec = np.array([0.1, -0.2, 1e-30, 3.4e38, -0.0, 1.0, 0.333333343, 7e-45], dtype=np.float32)
    entry = NewEntry(tricky, 2, 0, content_hash(tricky), vec, 1_764_100_000_123)
    store.replace_source("inbox/x.pdf", [entry], FileState(10, 20, 30))
    store.save()
    store.close()

    raw = path.read_bytes()
    doc = json.loads(raw)
    assert list(doc) == TOP_KEYS
    assert doc["version"] == "1.0"
    assert doc["model"] == MODEL
    assert doc["dimensions"] == DIMS
    assert doc["count"] == 1
    assert doc["fingerprint"] == {
        "model_sha256": FP.model_sha256,
        "pooling": "mean",
        "normalize": True,
        "chunk_size": 500,
        "chunk_overlap": 50,
    }
    assert doc["files"] == {"inbox/x.pdf": {"size": 10, "mtime_ns": 20, "inode": 30}}
    assert doc["created"].endswith("Z")
    (e,) = doc["embeddings"]
    assert list(e) == ["id", "content", "metadata", "embedding", "timestamp"]
    assert e["id"] == hashlib.sha256(b"inbox/x.pdf\x000").hexdigest()[:32]
    assert e["content"] == tricky
    assert e["metadata"] == {"source": "inbox/x.pdf", "page": 2, "chunk": 0, "hash": content_hash(tricky)}
    assert e["timestamp"] == 1_764_100_000_123
    assert bits(np.array(e["embedding"], dtype=np.float64).astype(np.float32)).tolist() == bits(vec).tolist()
    # float32 in shortest round-trip form, compact separators.
    assert b'"embedding":[0.1,-0.2,1e-30,3.4e+38,-0.0,1.0,0.33333334,7e-45]' in raw
    assert b'": ' not in raw.replace(tricky.encode(), b"")

    cache_path(path).unlink()
    again = open_store(path)
    assert again.loaded_via == "parse"
    (got,) = again.iter_entries()
    assert got.content == tricky
    assert bits(got.vector).tolist() == bits(vec).tolist()
    again.close()


def test_random_float32_values_survive_a_cold_parse_exactly(path: Path) -> None:
    rng = np.random.default_rng(5)
    patterns = rng.integers(0, 2**32, size=(400, DIMS), dtype=np.uint64).astype(np.uint32)
    vectors = patterns.view(np.float32)
    vectors[~np.isfinite(vectors)] = 1.5
    store = open_store(path)
    entries = [NewEntry(f"t{i}", None, i, content_hash(f"t{i}"), vectors[i], i) for i in range(len(vectors))]
    store.replace_source("a.txt", entries, state())
    store.save()
    store.close()
    cache_path(path).unlink()
    again = open_store(path)
    assert again.loaded_via == "parse"
    assert bits(again.matrix()).tolist() == bits(vectors).tolist()
    again.close()


def walkthrough_doc() -> dict[str, object]:
    """A store as the walkthrough's saveEmbeddingsJSON writes it (no fingerprint, no files)."""
    rng = np.random.default_rng(9)
    embeddings = []
    for i in range(3):
        embeddings.append(
            {
                "id": f"doc_{i}",
                "content": f"Introduction to machine learning, part {i}",
                "metadata": {"source": "ml_guide.pdf", "page": i + 1, "loc": {"lines": {"from": 1, "to": 9}}},
                "embedding": [float(x) for x in rng.standard_normal(DIMS).astype(np.float32)],
                "timestamp": 1_234_567_890 + i,
            }
        )
    return {
        "version": "1.0",
        "model": MODEL,
        "dimensions": DIMS,
        "count": 3,
        "created": "2025-01-02T03:04:05.678Z",
        "embeddings": embeddings,
    }


def test_walkthrough_pretty_file_loads_and_is_rewritten_in_our_layout(path: Path) -> None:
    doc = walkthrough_doc()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc, indent=2))

    readonly = Store.open_readonly(path)
    assert readonly.loaded_via == "generic"
    assert readonly.count == 3
    assert readonly.fingerprint is None
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # wrote nothing, took no lock

    with capture_logs() as logs:
        store = open_store(path)
    assert any(e["event"] == "store_fingerprint_missing" for e in logs)
    assert store.dirty  # adopted fingerprint, foreign layout
    got = list(store.iter_entries())
    assert [e.id for e in got] == ["doc_0", "doc_1", "doc_2"]
    assert [e.page for e in got] == [1, 2, 3]
    assert [e.chunk for e in got] == [0, 1, 2]  # numbered in file order when absent
    assert [e.hash for e in got] == [content_hash(e["content"]) for e in doc["embeddings"]]  # type: ignore[attr-defined]
    want = np.array([e["embedding"] for e in doc["embeddings"]], dtype=np.float32)  # type: ignore[attr-defined]
    assert bits(store.matrix()).tolist() == bits(want).tolist()
    assert store.created == "2025-01-02T03:04:05.678Z"
    store.save()
    store.close()

    rewritten = json.loads(path.read_bytes())
    assert list(rewritten) == TOP_KEYS
    assert rewritten["embeddings"][0]["metadata"]["loc"] == {"lines": {"from": 1, "to": 9}}
    assert rewritten["embeddings"][0]["id"] == "doc_0"
    again = open_store(path)
    assert again.loaded_via == "cache"
    assert again.entry(0).metadata["loc"] == {"lines": {"from": 1, "to": 9}}
    again.close()


def test_pretty_printed_copy_of_our_own_format_loads(filled: Store, path: Path) -> None:
    before = snapshot(filled)
    filled.close()
    doc = json.loads(path.read_bytes())
    doc = {"embeddings": doc.pop("embeddings"), **doc}  # another tool, another key order
    path.write_text(json.dumps(doc, indent=4))
    store = open_store(path)
    assert store.loaded_via == "generic"
    assert snapshot(store) == before
    assert store.file_state("inbox/f2.txt") == state(2)
    store.close()


# ----- changing the store -----


def test_replace_with_identical_chunks_changes_nothing(filled: Store) -> None:
    filled.replace_source("inbox/f1.txt", make_entries("inbox/f1.txt", 3), state(1))
    assert not filled.dirty
    filled.replace_source("inbox/f1.txt", make_entries("inbox/f1.txt", 3), state(99))
    assert filled.dirty  # only the stat signature moved
    assert filled.save().entries_written == 0


def test_replace_source_semantics_and_ids(filled: Store) -> None:
    ids = [c.id for c in filled.entries_for("inbox/f1.txt")]
    assert ids == [hashlib.sha256(f"inbox/f1.txt\x00{i}".encode()).hexdigest()[:32] for i in range(3)]
    new = make_entries("inbox/f1.txt", 2, tag="edited")
    filled.replace_source("inbox/f1.txt", new, state(7))
    stored = filled.entries_for("inbox/f1.txt")
    assert [c.id for c in stored] == ids[:2]  # ids follow source and position, not content
    assert [c.hash for c in stored] == [e.hash for e in new]
    assert filled.count == 14
    assert filled.file_state("inbox/f1.txt") == state(7)

    with pytest.raises(ValueError, match="shape"):
        filled.replace_source("x", [NewEntry("a", None, 0, "h" * 64, np.zeros(3, np.float32), 0)], state())
    with pytest.raises(ValueError, match="NaN"):
        filled.replace_source(
            "x", [NewEntry("a", None, 0, "h" * 64, np.full(DIMS, np.nan, np.float32), 0)], state()
        )
    with pytest.raises(ValueError, match="same chunk"):
        filled.replace_source("x", make_entries("x", 1) * 2, state())
    assert "x" not in filled.sources()


def test_remove_source(filled: Store) -> None:
    filled.remove_source("inbox/f3.txt")
    assert "inbox/f3.txt" not in filled.sources()
    assert filled.entries_for("inbox/f3.txt") == []
    assert filled.file_state("inbox/f3.txt") is None
    assert filled.count == 12
    filled.save()
    assert not filled.dirty
    filled.remove_source("never/there.txt")
    assert not filled.dirty


def test_rename_source_keeps_vectors_and_timestamps_with_new_ids(filled: Store, path: Path) -> None:
    before = {e.chunk: e for e in filled.iter_entries() if e.source == "inbox/f2.txt"}
    vectors = {c: bits(e.vector).tobytes() for c, e in before.items()}
    assert filled.rename_source("inbox/f2.txt", "archive/f2.txt", state(42))
    assert "inbox/f2.txt" not in filled.sources()
    assert filled.file_state("archive/f2.txt") == state(42)
    moved = {e.chunk: e for e in filled.iter_entries() if e.source == "archive/f2.txt"}
    assert set(moved) == set(before)
    for chunk, e in moved.items():
        assert e.id == hashlib.sha256(f"archive/f2.txt\x00{chunk}".encode()).hexdigest()[:32]
        assert e.timestamp == before[chunk].timestamp
        assert e.hash == before[chunk].hash
        assert bits(e.vector).tobytes() == vectors[chunk]
    stats = filled.save()
    assert stats.entries_written == 3  # renamed entries carry new ids and sources
    assert not filled.rename_source("nothing/here.txt", "x.txt", state())

    # Moving onto a known source replaces it.
    assert filled.rename_source("inbox/f0.txt", "inbox/f1.txt", state(5))
    assert filled.count == 12
    assert [c.hash for c in filled.entries_for("inbox/f1.txt")] == [
        e.hash for e in make_entries("inbox/f0.txt", 3)
    ]
    filled.save()
    doc = json.loads(path.read_bytes())
    assert {e["metadata"]["source"] for e in doc["embeddings"]} == {
        "inbox/f1.txt",
        "archive/f2.txt",
        "inbox/f3.txt",
        "inbox/f4.txt",
    }


def test_vector_for_hash_finds_vectors_of_any_source(path: Path) -> None:
    store = open_store(path)
    shared = make_entries("a.txt", 1)[0]
    store.replace_source("a.txt", [shared], state(1))
    store.replace_source("b.txt", [shared], state(2))
    vec, ts = store.vector_for_hash(shared.hash) or (None, None)
    assert vec is not None and bits(vec).tolist() == bits(shared.vector).tolist()
    assert ts == shared.timestamp
    store.remove_source("a.txt")
    assert store.vector_for_hash(shared.hash) is not None  # still held by b.txt
    store.remove_source("b.txt")
    assert store.vector_for_hash(shared.hash) is None
    assert store.vector_for_hash("0" * 64) is None
    store.close()


def test_matrix_rows_follow_entries_through_many_changes(path: Path) -> None:
    store = open_store(path)
    expected: dict[str, list[NewEntry]] = {}
    rng = np.random.default_rng(3)
    for step in range(60):
        source = f"s{int(rng.integers(0, 12))}.txt"
        if rng.random() < 0.25:
            store.remove_source(source)
            expected.pop(source, None)
        else:
            entries = make_entries(source, int(rng.integers(0, 6)), tag=str(step))
            store.replace_source(source, entries, state(step))
            expected[source] = entries
        if step % 7 == 0:
            store.save()
    matrix = store.matrix()
    assert matrix.shape == (sum(len(v) for v in expected.values()), DIMS)
    for row, e in enumerate(store.iter_entries()):
        want = expected[e.source][e.chunk]
        assert e.hash == want.hash
        assert bits(matrix[row]).tolist() == bits(want.vector).tolist()
    store.save()
    before = snapshot(store)
    store.close()
    cache_path(path).unlink()
    again = open_store(path)
    assert snapshot(again) == before
    again.close()


# ----- incremental saves -----


def test_incremental_save_splices_unchanged_entries(path: Path) -> None:
    store = open_store(path)
    for k in range(50):
        store.replace_source(f"f{k:02d}.txt", make_entries(f"f{k:02d}.txt", 4), state(k))
    first = store.save()
    assert first.entries_written == 200 and first.entries_reused == 0 and first.bytes_reused == 0

    store.replace_source("f17.txt", make_entries("f17.txt", 3, tag="new"), state(1000))
    second = store.save()
    assert second.entries == 199
    assert second.entries_written == 3
    assert second.entries_reused == 196
    assert second.bytes_written * 10 < first.bytes_written  # the header and three entries
    assert second.bytes_reused + second.bytes_written == path.stat().st_size
    assert json.loads(path.read_bytes())["count"] == 199

    # The spliced spans point into the file just written, so the next save splices again.
    store.remove_source("f00.txt")
    third = store.save()
    assert third.entries_written == 0 and third.entries_reused == 195
    assert store.save().saved is False
    before = snapshot(store)
    store.close()
    for drop_cache in (False, True):
        if drop_cache:
            cache_path(path).unlink()
        again = open_store(path)
        assert snapshot(again) == before
        again.close()


def test_save_splices_by_hand_where_copy_file_range_is_refused(
    filled: Store, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    filled.replace_source("inbox/f4.txt", make_entries("inbox/f4.txt", 1, tag="x"), state(9))
    stats = filled.save()
    assert stats.entries_reused == 12
    before = snapshot(filled)
    filled.close()
    cache_path(path).unlink()
    again = open_store(path)
    assert snapshot(again) == before
    again.close()


# ----- locking, temps, corruption -----


def test_second_writer_is_refused_in_the_same_process(filled: Store, path: Path) -> None:
    with pytest.raises(StoreLockedError) as info:
        open_store(path)
    assert str(lock_path(path)) in str(info.value)
    assert str(os.getpid()) in str(info.value)
    filled.close()
    open_store(path).close()  # released on close


def test_second_writer_is_refused_in_another_process(
    filled: Store, path: Path, cli_env: dict[str, str]
) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from daemon.store.store import Store, Fingerprint\n"
        "from daemon.errors import StoreLockedError\n"
        "fp = Fingerprint('ab' * 32, 'mean', True, 500, 50)\n"
        "try:\n"
        f"    Store.open(Path({str(path)!r}), model={MODEL!r}, dimensions={DIMS}, fingerprint=fp)\n"
        "except StoreLockedError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert str(lock_path(path)) in proc.stdout
    assert f"process {os.getpid()}" in proc.stdout


def test_readonly_open_works_beside_the_writer_and_cannot_write(filled: Store, path: Path) -> None:
    reader = Store.open_readonly(path)
    assert reader.count == 15
    with pytest.raises(StoreError, match="read-only"):
        reader.remove_source("inbox/f0.txt")
    with pytest.raises(StoreError, match="read-only"):
        reader.save()
    filled.remove_source("inbox/f0.txt")
    filled.save()  # the reader holds no lock
    assert Store.open_readonly(path).count == 12
    with pytest.raises(StoreError, match="no store"):
        Store.open_readonly(path.with_name("missing.json"))


def test_stale_temps_are_removed_at_open(filled: Store, path: Path) -> None:
    filled.close()
    tmp = path.with_name(path.name + ".tmp")
    idx_tmp = cache_path(path).with_name(cache_path(path).name + ".tmp")
    tmp.write_bytes(b'{"half a store')
    idx_tmp.write_bytes(b"junk")
    with capture_logs() as logs:
        store = open_store(path)
    assert not tmp.exists() and not idx_tmp.exists()
    assert {str(tmp), str(idx_tmp)} <= {
        e.get("path") for e in logs if e["event"] == "store_stale_temp_removed"
    }
    assert store.count == 15
    store.close()


def _truncated(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


def _absurd_dims(path: Path) -> bytes:
    return path.read_bytes().replace(b'"dimensions":8,', b'"dimensions":99999999999,', 1)


def _wrong_dims(path: Path) -> bytes:
    doc = json.loads(path.read_bytes())
    doc["embeddings"][1]["embedding"] = doc["embeddings"][1]["embedding"][:3]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: b"",
        _truncated,
        lambda p: b"\x00\x17garbage\xff not json at all",
        lambda p: b"[1, 2, 3]",
        _wrong_dims,
        _absurd_dims,
    ],
    ids=["empty", "truncated", "garbage", "not-an-object", "wrong-dimensions", "absurd-dimensions"],
)
def test_corrupt_store_is_moved_aside_and_an_empty_one_started(
    filled: Store, path: Path, damage: object
) -> None:
    filled.close()
    bad = damage(path)  # type: ignore[operator]
    path.write_bytes(bad)
    with pytest.raises(StoreCorruptError):
        Store.open_readonly(path)
    with capture_logs() as logs:
        store = open_store(path)
    assert store.count == 0 and store.sources() == set()
    assert store.loaded_via == "corrupt"
    (moved,) = path.parent.glob(path.name + ".corrupt-*")
    assert moved.read_bytes() == bad
    (warning,) = [e for e in logs if e["event"] == "store_corrupt"]
    assert warning["log_level"] == "warning"
    assert warning["path"] == str(path) and warning["moved_to"] == str(moved)
    store.save()
    store.close()
    assert json.loads(path.read_bytes())["count"] == 0


def test_damaged_or_stale_cache_is_ignored(filled: Store, path: Path) -> None:
    before = snapshot(filled)
    filled.close()
    idx = cache_path(path)
    data = bytearray(idx.read_bytes())
    data[-5] ^= 0xFF
    idx.write_bytes(bytes(data))
    store = open_store(path)
    assert store.loaded_via == "parse"  # checksum caught it
    assert snapshot(store) == before
    store.close()

    idx.write_bytes(idx.read_bytes()[:-100])
    store = open_store(path)
    assert store.loaded_via == "parse"  # truncated
    assert snapshot(store) == before
    store.close()

    # Another tool rewrites the JSON: the cache describes an older version and is not used.
    cached = idx.read_bytes()
    doc = json.loads(path.read_bytes())
    doc["embeddings"] = doc["embeddings"][:2]
    path.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
    idx.write_bytes(cached)
    store = open_store(path)
    assert store.loaded_via == "generic"
    assert store.count == 2
    store.close()


# ----- fingerprint -----


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"fingerprint": Fingerprint("cd" * 32, "mean", True, 500, 50)}, "model_sha256"),
        ({"fingerprint": Fingerprint("ab" * 32, "mean", True, 800, 50)}, "chunk_size: 500 -> 800"),
        ({"fingerprint": Fingerprint("ab" * 32, "cls", True, 500, 50)}, "pooling"),
        ({"model": "bge-small-en-v1.5"}, "model: 'all-MiniLM-L6-v2' -> 'bge-small-en-v1.5'"),
        ({"dimensions": 16}, "dimensions: 8 -> 16"),
    ],
)
def test_fingerprint_mismatch_raises_and_rebuild_starts_over(
    filled: Store, path: Path, kwargs: dict[str, object], named: str
) -> None:
    filled.close()
    original = path.read_bytes()
    args: dict[str, object] = {"model": MODEL, "dimensions": DIMS, "fingerprint": FP, **kwargs}
    with pytest.raises(FingerprintMismatchError) as info:
        Store.open(path, **args)  # type: ignore[arg-type]
    assert named in str(info.value)
    assert "--reembed" in str(info.value)
    assert path.read_bytes() == original
    # The failed open released the lock, and a store that matches is kept even with rebuild.
    open_store(path, rebuild=True).close()
    assert path.read_bytes() == original
    store = Store.open(path, rebuild=True, **args)  # type: ignore[arg-type]
    assert store.count == 0 and store.loaded_via == "rebuild"
    (backup,) = path.parent.glob(path.name + ".bak-*")
    assert backup.read_bytes() == original
    store.save()
    store.close()
    doc = json.loads(path.read_bytes())
    assert doc["count"] == 0 and doc["dimensions"] == args["dimensions"]
    for drop_cache in (False, True):
        if drop_cache:
            cache_path(path).unlink()
        empty = Store.open(path, **args)  # type: ignore[arg-type]
        assert empty.loaded_via == ("parse" if drop_cache else "cache")
        assert not empty.dirty and empty.count == 0
        empty.close()


# ----- write failures -----


def test_failed_rename_leaves_the_old_file_and_keeps_the_store_dirty(
    filled: Store, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = path.read_bytes()
    filled.replace_source("inbox/new.txt", make_entries("inbox/new.txt", 2), state(77))

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", no_space)
        with pytest.raises(StoreError, match="No space left on device") as info:
            filled.save()
    assert not isinstance(info.value, StoreLockedError)
    assert path.read_bytes() == original
    assert filled.dirty
    assert not path.with_name(path.name + ".tmp").exists()

    stats = filled.save()  # the retry works once there is room again
    assert stats.saved and stats.entries_written == 2
    assert json.loads(path.read_bytes())["count"] == 17


def test_failed_write_midway_leaves_the_old_file(
    filled: Store, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = path.read_bytes()
    filled.remove_source("inbox/f0.txt")

    def eio(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", eio)
        with pytest.raises(StoreError, match="Input/output error"):
            filled.save()
    assert path.read_bytes() == original
    assert filled.dirty
    assert not path.with_name(path.name + ".tmp").exists()
    filled.save()
    assert Store.open_readonly(path).count == 12


def test_closed_store_refuses_changes(filled: Store) -> None:
    filled.close()
    with pytest.raises(StoreError, match="closed"):
        filled.remove_source("inbox/f1.txt")


def test_no_file_descriptor_outlives_its_store(filled: Store, path: Path) -> None:
    filled.close()
    before = len(list(Path("/proc/self/fd").iterdir()))
    for _ in range(3):
        store = open_store(path)
        store.remove_source("inbox/f0.txt")
        store.save()
        store.close()
        Store.open_readonly(path)
        with pytest.raises(FingerprintMismatchError):
            Store.open(path, model="other", dimensions=DIMS, fingerprint=FP)
    assert len(list(Path("/proc/self/fd").iterdir())) == before


def test_a_source_files_language_is_recorded_and_old_records_keep_their_bytes() -> None:
    from daemon.store.format import FileState as State

    code = State(10, 20, 30, extraction=2, language="python")
    assert code.to_json() == {"size": 10, "mtime_ns": 20, "inode": 30, "extraction": 2, "language": "python"}
    assert State.from_json(code.to_json()) == code
    plain = State(10, 20, 30)
    assert plain.to_json() == {"size": 10, "mtime_ns": 20, "inode": 30}
    assert State.from_json({"size": 10, "mtime_ns": 20, "inode": 30, "language": 7}) == plain
