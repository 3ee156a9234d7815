"""Pipeline diffing on its own: a fake embedder, a real store and real files in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEmbedder
from structlog.testing import capture_logs

from daemon.errors import ExtractError, IndexingInterrupted
from daemon.ingest.extract import ExtractLimits
from daemon.ingest.pipeline import ChunkingParams, Pipeline
from daemon.store.store import FileState, Fingerprint, Store


def para(tag: str) -> str:
    """About 200 characters: one paragraph fits a 300-character chunk, two never share one."""
    return f"{tag}: " + " ".join(f"w{j}" for j in range(45))


PARAS = [para(f"Paragraph{i} text") for i in range(6)]
EDITED = para("Rewritten paragraph")
FRESH = para("Brand new")
POISONED = para("POISON inside")
LIMITS = ExtractLimits(max_bytes=10 * 2**20, timeout_s=30, memory_bytes=512 * 2**20)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        self.ms += 1000
        return self.ms


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    fp = Fingerprint(model_sha256="f" * 64, pooling="mean", normalize=True, chunk_size=300, chunk_overlap=0)
    with Store.open(tmp_path / "store.json", model="fake-model", dimensions=8, fingerprint=fp) as s:
        yield s


def _pipeline(store: Store, embedder: FakeEmbedder, *, batch_size: int = 64) -> Pipeline:
    return Pipeline(
        embedder, store, ChunkingParams(300, 0), LIMITS, batch_size=batch_size, wall_clock_ms=Clock()
    )


def _write(path: Path, paras: list[str]) -> FileState:
    path.write_text("\n\n".join(paras))
    st = path.stat()
    return FileState(st.st_size, st.st_mtime_ns, st.st_ino)


def test_new_file_embeds_every_chunk(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    state = _write(tmp_path / "a.md", PARAS)
    result = _pipeline(store, emb).index_file(tmp_path / "a.md", "in/a.md", state)
    assert result.chunks == len(PARAS) and result.embedded == len(PARAS) and result.reused == 0
    assert store.file_state("in/a.md") == state
    stored = store.entries_for("in/a.md")
    assert [c.chunk for c in stored] == list(range(len(PARAS)))
    vec, _ = store.vector_for_hash(stored[0].hash)  # type: ignore[misc]
    np.testing.assert_array_equal(vec, emb.expected(PARAS[0]))


def test_editing_one_paragraph_embeds_only_that_chunk(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    pipe = _pipeline(store, emb)
    pipe.index_file(tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", PARAS))
    before = {c.hash: c.timestamp for c in store.entries_for("in/a.md")}
    emb.calls.clear()
    edited = [*PARAS[:3], EDITED, *PARAS[4:]]
    result = pipe.index_file(tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", edited))
    assert emb.embedded_texts == [EDITED]
    assert (result.embedded, result.reused) == (1, len(PARAS) - 1)
    after = store.entries_for("in/a.md")
    assert sum(c.hash not in before for c in after) == 1
    assert all(c.timestamp == before[c.hash] for c in after if c.hash in before)


def test_unchanged_content_with_new_mtime_embeds_nothing(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    pipe = _pipeline(store, emb)
    pipe.index_file(tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", PARAS))
    emb.calls.clear()
    os.utime(tmp_path / "a.md", ns=(1, 2))
    st = (tmp_path / "a.md").stat()
    result = pipe.index_file(tmp_path / "a.md", "in/a.md", FileState(st.st_size, st.st_mtime_ns, st.st_ino))
    assert emb.calls == [] and result.embedded == 0 and result.reused == len(PARAS)
    assert store.file_state("in/a.md") == FileState(st.st_size, st.st_mtime_ns, st.st_ino)


def test_a_chunk_known_from_another_file_is_reused(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    pipe = _pipeline(store, emb)
    pipe.index_file(tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", PARAS[:3]))
    first_ts = {c.hash: c.timestamp for c in store.entries_for("in/a.md")}
    emb.calls.clear()
    result = pipe.index_file(tmp_path / "b.md", "in/b.md", _write(tmp_path / "b.md", [PARAS[1], FRESH]))
    assert emb.embedded_texts == [FRESH]
    assert result.reused == 1
    shared = store.entries_for("in/b.md")[0]
    assert shared.timestamp == first_ts[shared.hash]


def test_duplicate_chunks_within_a_file_are_embedded_once(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    result = _pipeline(store, emb).index_file(
        tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", [PARAS[0], PARAS[1], PARAS[0]])
    )
    assert sorted(emb.embedded_texts) == sorted([PARAS[0], PARAS[1]])
    assert result.chunks == 3 and result.embedded == 2


def test_embedding_runs_in_batches(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    _pipeline(store, emb, batch_size=2).index_file(
        tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", PARAS[:5])
    )
    assert [len(c) for c in emb.calls] == [2, 2, 1]


def test_a_chunk_the_embedder_refuses_is_quarantined_and_the_rest_indexed(
    tmp_path: Path, store: Store
) -> None:
    emb = FakeEmbedder(poison="POISON")
    paras = [PARAS[0], POISONED, PARAS[2]]
    with capture_logs() as logs:
        result = _pipeline(store, emb).index_file(
            tmp_path / "a.md", "in/a.md", _write(tmp_path / "a.md", paras)
        )
    assert result.quarantined == 1 and result.chunks == 2
    assert [c.chunk for c in store.entries_for("in/a.md")] == [0, 2]
    event = next(e for e in logs if e["event"] == "chunk_quarantined")
    assert event["source"] == "in/a.md" and event["chunk"] == 1 and "POISON" in event["reason"]


def test_unreadable_file_raises_and_keeps_what_is_stored(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    pipe = _pipeline(store, emb)
    state = _write(tmp_path / "a.md", PARAS[:2])
    pipe.index_file(tmp_path / "a.md", "in/a.md", state)
    (tmp_path / "a.md").write_bytes(b"\x00\x01binary\x00" * 100)
    st = (tmp_path / "a.md").stat()
    with pytest.raises(ExtractError, match="binary"):
        pipe.index_file(tmp_path / "a.md", "in/a.md", FileState(st.st_size, st.st_mtime_ns, st.st_ino))
    assert len(store.entries_for("in/a.md")) == 2
    assert store.file_state("in/a.md") == state


def test_rename_and_remove(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    pipe = _pipeline(store, emb)
    state = _write(tmp_path / "a.md", PARAS[:2])
    pipe.index_file(tmp_path / "a.md", "in/a.md", state)
    before = [(c.hash, c.timestamp) for c in store.entries_for("in/a.md")]
    emb.calls.clear()
    pipe.rename("in/a.md", "in/b.md", state)
    assert emb.calls == []
    assert [(c.hash, c.timestamp) for c in store.entries_for("in/b.md")] == before
    assert store.file_state("in/a.md") is None
    pipe.remove("in/b.md")
    assert store.sources() == set() and store.count == 0


def test_a_stop_between_batches_abandons_the_file_and_keeps_the_old_entries(
    tmp_path: Path, store: Store
) -> None:
    emb = FakeEmbedder()
    pipe = _pipeline(store, emb, batch_size=2)
    state = _write(tmp_path / "a.md", PARAS[:2])
    pipe.index_file(tmp_path / "a.md", "in/a.md", state)
    new_state = _write(tmp_path / "a.md", [para(f"Other{i} text") for i in range(6)])
    calls = iter([False, True])
    with pytest.raises(IndexingInterrupted, match="stopped after 2 of 6"):
        pipe.index_file(tmp_path / "a.md", "in/a.md", new_state, should_stop=lambda: next(calls))
    assert store.file_state("in/a.md") == state
    assert len(store.entries_for("in/a.md")) == 2


def test_each_chunk_is_counted_once_and_its_tokens_reported(tmp_path: Path, store: Store) -> None:
    emb = FakeEmbedder()
    path = tmp_path / "doc.txt"
    state = _write(path, [para("a"), para("b"), para("c")])
    result = _pipeline(store, emb).index_file(path, "doc.txt", state)
    texts = [e.content for e in store.source_entries("doc.txt")]
    assert sorted(emb.counted) == sorted(texts), "the chunker counts; nobody counts again"
    assert result.tokens == sum(emb.count_tokens(t) for t in texts)


def test_through_the_daemons_scheduler_each_chunk_is_still_counted_once(tmp_path: Path, store: Store) -> None:
    from daemon.embed.scheduler import QueuedEmbedder, Scheduler

    emb = FakeEmbedder()
    path = tmp_path / "doc.txt"
    state = _write(path, [para("a"), para("b"), para("c")])
    with Scheduler(emb) as scheduler:
        pipe = Pipeline(
            QueuedEmbedder(scheduler), store, ChunkingParams(300, 0), LIMITS, wall_clock_ms=Clock()
        )
        pipe.index_file(path, "doc.txt", state)
        assert scheduler.stats().index_jobs == 1
    texts = [e.content for e in store.source_entries("doc.txt")]
    assert len(texts) == 3
    assert sorted(emb.counted) == sorted(texts), "the scheduler takes the chunker's counts"
