"""The store's journal on real files: changes durable in O(change), replayed at open, folded in.

Every test journals whatever the store's size (``EMBEDD_JOURNAL_ABOVE_BYTES=0``). A crash is
simulated by copying the store's folder while the writer still holds it: every write of the
store is a ``pwrite`` that is in the page cache once it returns, so the copy is what SIGKILL
would leave (power loss is the fsync's business, tested end to end in tests/service/test_crash.py).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs
from support import write_config
from test_store import make_entries, open_store, state

from daemon.commands import status
from daemon.commands.export import export_jsonl
from daemon.config import load_config
from daemon.errors import StoreError
from daemon.store.fold import write_fold
from daemon.store.journal import MAGIC, Journal, journal_path
from daemon.store.keyword import kw_path
from daemon.store.store import FileState, Store

Image = tuple[list[tuple[object, ...]], dict[str, FileState | None]]


@pytest.fixture(autouse=True)
def journal_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDD_JOURNAL_ABOVE_BYTES", "0")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "embeddings.json"


@pytest.fixture
def filled(path: Path) -> Iterator[Store]:
    """Five sources of three chunks, folded into the JSON file (the first save of a new store)."""
    store = open_store(path)
    for k in range(5):
        store.replace_source(f"inbox/f{k}.txt", make_entries(f"inbox/f{k}.txt", 3), state(k))
    assert not store.save().journalled
    yield store
    store.close()


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).tobytes()


def image(store: Store) -> Image:
    """Everything a reader can see of a store, independent of row order."""
    entries = sorted(
        (e.id, e.content, e.source, e.page, e.chunk, e.hash, e.timestamp, bits(e.vector))
        for e in store.iter_entries()
    )
    return entries, {s: store.file_state(s) for s in sorted(store.sources())}


def reopened(path: Path) -> Image:
    with open_store(path) as store:
        return image(store)


def readonly(path: Path) -> Image:
    with Store.open_readonly(path) as store:
        return image(store)


def crash_copy(path: Path, dest: Path) -> Path:
    """The store's folder as a SIGKILL would leave it now."""
    shutil.copytree(path.parent, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest / path.name


def some_changes(store: Store, round_: int) -> None:
    """Every kind of change: an edit, a new file, a removal, renames (onto a known file too)."""
    store.replace_source(
        "inbox/f0.txt", make_entries("inbox/f0.txt", 4, tag=f"r{round_}"), state(100 + round_)
    )
    store.replace_source(
        f"inbox/new{round_}.txt", make_entries(f"inbox/new{round_}.txt", 2), state(200 + round_)
    )
    store.remove_source("inbox/f1.txt")
    store.rename_source("inbox/f2.txt", f"archive/f2-{round_}.txt", state(300 + round_))
    store.rename_source("inbox/f3.txt", "inbox/f4.txt", state(400 + round_))
    store.rename_source("inbox/f0.txt", "inbox/f0.txt", state(500 + round_))


def test_a_save_appends_the_change_to_the_journal_and_leaves_the_json_file(filled: Store, path: Path) -> None:
    json_before = path.read_bytes()
    filled.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 3, tag="edited"), state(9))
    stats = filled.save()
    assert stats.journalled and not filled.dirty and filled.unfolded
    assert path.read_bytes() == json_before
    # One record of three chunks of width 8: far below the 5 kB JSON file, a few times the change.
    assert 0 < stats.bytes_written < 1500
    assert journal_path(path).stat().st_size == len(MAGIC) + stats.bytes_written
    assert not filled.save().saved  # nothing left to write


def test_every_reader_sees_the_journalled_changes(filled: Store, path: Path) -> None:
    some_changes(filled, 1)
    filled.save()
    expected = image(filled)
    assert readonly(path) == expected  # beside the running writer, without its lock
    with Store.open_readonly(path) as ro:
        assert ro.updated == filled.updated
    filled.close()
    assert reopened(path) == expected
    assert readonly(path) == expected


def test_a_fold_writes_everything_into_the_json_file_and_empties_the_journal(
    filled: Store, path: Path
) -> None:
    some_changes(filled, 1)
    filled.save()
    expected = image(filled)
    stats = filled.fold()
    assert stats.saved and not stats.journalled and not filled.unfolded
    assert journal_path(path).read_bytes() == MAGIC
    doc = json.loads(path.read_bytes())
    assert doc["journal_seq"] == 6  # one record per change
    assert doc["count"] == len(doc["embeddings"]) == len(expected[0])
    assert sorted(doc["files"]) == sorted(expected[1])
    # The next changes go to the journal again, numbered on, and a reopen replays only them.
    some_changes(filled, 2)
    filled.save()
    expected = image(filled)
    filled.close()
    with capture_logs() as logs:
        assert reopened(path) == expected
    replayed = [e for e in logs if e["event"] == "store_journal_replayed"]
    assert replayed[0]["records"] == 3  # round 2: f1, f2 and f3 are gone already, nothing was done to them


def test_a_crash_between_the_folds_rename_and_the_journal_cut_applies_nothing_twice(
    filled: Store, path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    some_changes(filled, 1)
    filled.save()

    def crash(self: Journal, seq: int) -> None:
        raise OSError(errno.EIO, "simulated crash before the cut")

    with monkeypatch.context() as m, capture_logs() as logs:
        m.setattr(Journal, "cut_through", crash)
        filled.fold()
        # Changes after the fold follow the records the JSON file holds now.
        some_changes(filled, 2)
        filled.save()
    assert any(e["event"] == "store_journal_cut_failed" for e in logs)
    assert json.loads(path.read_bytes())["journal_seq"] == 6
    expected = image(filled)
    copy = crash_copy(path, tmp_path / "crash")
    with capture_logs() as logs:
        assert reopened(copy) == expected
    assert not [e for e in logs if e["event"] == "store_journal_mismatch"]
    assert [e["records"] for e in logs if e["event"] == "store_journal_replayed"] == [3]
    assert readonly(copy) == expected
    # The reopen finished the cut: only the records after the fold are left.
    with open_store(copy) as store:
        assert store.journal_bytes < journal_path(path).stat().st_size - len(MAGIC)


def test_a_fold_written_beside_new_changes_keeps_them_at_every_step(
    filled: Store, path: Path, tmp_path: Path
) -> None:
    some_changes(filled, 1)
    filled.save()
    plan = filled.begin_fold()
    # Indexing goes on while the fold is written on another thread.
    some_changes(filled, 2)
    filled.save()
    expected = image(filled)
    assert reopened(crash_copy(path, tmp_path / "before-write")) == expected
    write_fold(plan)
    assert reopened(crash_copy(path, tmp_path / "after-rename")) == expected
    filled.finish_fold(plan)
    assert filled.unfolded  # round 2 is in the journal only
    assert image(filled) == expected
    assert reopened(crash_copy(path, tmp_path / "after-cut")) == expected
    # The spans were carried over: the next fold splices every row that did not change since.
    stats = filled.fold()
    assert stats.entries_reused >= stats.entries - 8
    filled.close()
    assert reopened(path) == expected


def test_a_record_cut_off_anywhere_drops_that_change_only(filled: Store, path: Path, tmp_path: Path) -> None:
    some_changes(filled, 1)
    filled.save()
    before_last = image(filled)
    start = journal_path(path).stat().st_size
    filled.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 2, tag="last"), state(77))
    filled.save()
    full = journal_path(path).read_bytes()
    for cut in range(start, len(full)):
        copy = crash_copy(path, tmp_path / f"cut{cut}")
        journal_path(copy).write_bytes(full[:cut])
        with capture_logs() as logs:
            got = reopened(copy)
        assert got == before_last, cut
        if cut > start:
            assert any(e["event"] == "store_journal_tail_dropped" for e in logs), cut
        # The torn tail is cut away, so a change made after the restart is replayed too.
        with open_store(copy) as store:
            store.remove_source("inbox/new1.txt")
            store.save()
            after = image(store)
        assert reopened(copy) == after
        shutil.rmtree(copy.parent)


def test_a_record_failing_its_checksum_is_dropped(filled: Store, path: Path, tmp_path: Path) -> None:
    filled.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 3, tag="a"), state(11))
    filled.save()
    first = image(filled)
    start = journal_path(path).stat().st_size
    filled.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 3, tag="b"), state(12))
    filled.save()
    data = bytearray(journal_path(path).read_bytes())
    data[start + (len(data) - start) // 2] ^= 0x40
    copy = crash_copy(path, tmp_path / "flipped")
    journal_path(copy).write_bytes(bytes(data))
    with capture_logs() as logs:
        assert reopened(copy) == first
    dropped = [e for e in logs if e["event"] == "store_journal_tail_dropped"]
    assert dropped and dropped[0]["reason"] == "checksum mismatch"


def test_a_journal_that_does_not_follow_the_json_file_is_moved_aside(
    filled: Store, path: Path, tmp_path: Path
) -> None:
    old_json = path.read_bytes()  # journal_seq 0
    some_changes(filled, 1)
    filled.save()
    filled.fold()  # the JSON holds records 1-6 now
    filled.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 1, tag="late"), state(99))
    filled.save()  # record 7
    filled.close()
    path.write_bytes(old_json)  # restored from a backup taken before the fold
    with capture_logs() as logs, open_store(path) as store:
        assert store.count == 15 and store.journal_bytes == 0
    assert any(e["event"] == "store_journal_mismatch" for e in logs)
    assert list(path.parent.glob(path.name + ".journal.mismatch-*"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
@pytest.mark.parametrize("where", ["pwrite", "half-pwrite", "fdatasync"])
def test_a_failed_journal_write_keeps_the_store_consistent(  # noqa: PLR0917 - fixtures and parameters
    filled: Store, path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, where: str
) -> None:
    some_changes(filled, 1)
    filled.save()
    durable = image(filled)
    size = journal_path(path).stat().st_size
    filled.replace_source("inbox/f0.txt", make_entries("inbox/f0.txt", 5, tag="x"), state(55))
    wanted = image(filled)
    real_pwrite = os.pwrite

    def failing(*args: object) -> object:
        raise OSError(code, os.strerror(code))

    def half(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(code, os.strerror(code))

    with monkeypatch.context() as m:
        m.setattr(os, where.removeprefix("half-"), half if where == "half-pwrite" else failing)
        with pytest.raises(StoreError, match="cannot write the journal"):
            filled.save()
    assert filled.dirty  # kept in memory for the retry
    assert journal_path(path).stat().st_size == size  # a partial record was cut
    assert reopened_copy(path, tmp_path / "failed") == durable
    stats = filled.save()  # the disk is back
    assert stats.journalled
    assert reopened_copy(path, tmp_path / "retried") == wanted
    filled.close()
    assert reopened(path) == wanted


def reopened_copy(path: Path, dest: Path) -> Image:
    return reopened(crash_copy(path, dest))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_a_failed_fold_leaves_the_json_file_and_the_journal(
    filled: Store, path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    some_changes(filled, 1)
    filled.save()
    expected = image(filled)
    json_before, journal_before = path.read_bytes(), journal_path(path).read_bytes()

    def failing(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    with monkeypatch.context() as m:
        m.setattr(os, "replace", failing)
        with pytest.raises(StoreError, match="cannot save the store"):
            filled.fold()
    assert path.read_bytes() == json_before and journal_path(path).read_bytes() == journal_before
    assert not list(path.parent.glob("*.tmp"))
    assert filled.unfolded and not filled.dirty
    assert reopened_copy(path, tmp_path / "failed") == expected
    filled.fold()  # the disk is back
    assert not filled.unfolded
    filled.close()
    assert reopened(path) == expected


def test_the_keyword_index_follows_a_replayed_change(filled: Store, path: Path, tmp_path: Path) -> None:
    assert filled.keyword is not None
    before = crash_copy(path, tmp_path / "before")  # the keyword sidecar as it was
    entries = make_entries("inbox/f0.txt", 2, tag="zebrafish")
    filled.replace_source("inbox/f0.txt", entries, state(31))
    filled.save()
    # A crash that left the journal written but the keyword sidecar behind it.
    copy = crash_copy(path, tmp_path / "after")
    shutil.copy(kw_path(before), kw_path(copy))
    with open_store(copy) as store:
        assert store.keyword is not None
        hits = store.keyword.search('"zebrafish"', 10)
        assert sorted((h.source, h.chunk) for h in hits) == [("inbox/f0.txt", 0), ("inbox/f0.txt", 1)]
    with Store.open_readonly(copy) as ro:
        index, _ = ro.keyword_reader()
        assert index is not None and len(index.search('"zebrafish"', 10)) == 2


def test_a_small_store_keeps_rewriting_its_json_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDD_JOURNAL_ABOVE_BYTES", str(1 << 30))
    with open_store(path) as store:
        store.replace_source("a.txt", make_entries("a.txt", 2), state(1))
        store.save()
        store.replace_source("a.txt", make_entries("a.txt", 2, tag="b"), state(2))
        stats = store.save()
        assert not stats.journalled and not store.unfolded
    assert not journal_path(path).exists()
    doc = json.loads(path.read_bytes())
    assert "journal_seq" not in doc and doc["count"] == 2
    assert np.allclose(doc["embeddings"][0]["embedding"], make_entries("a.txt", 2, tag="b")[0].vector)


def test_status_and_export_see_the_journalled_changes(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, tmp_path / "no-model.gguf"))
    with open_store(config.store.path) as store:
        store.replace_source("inbox/a.txt", make_entries("inbox/a.txt", 3), state(1))
        store.save()  # folded: a new store's first save writes the JSON file
        store.replace_source("inbox/b.txt", make_entries("inbox/b.txt", 2), state(2))
        store.remove_source("inbox/a.txt")
        store.save()  # journalled
        assert store.unfolded
        found = status.store_status(config)
        assert (found.files, found.chunks, found.layout) == (1, 2, "lines")
        out = io.BytesIO()
        stats = export_jsonl(config.store.path, out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert stats.entries == 2 and {e["metadata"]["source"] for e in lines} == {"inbox/b.txt"}
        assert json.loads(config.store.path.read_bytes())["count"] == 3  # the file alone is behind
