"""``[chunking] context_prefix``: what is embedded, what is stored, how vectors are keyed, and an
existing store without the fingerprint field. A fake embedder, a real store, real files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeEmbedder

from daemon.commands.verify import _check_entries
from daemon.errors import FingerprintMismatchError
from daemon.ingest.chunker import embedding_input
from daemon.ingest.extract import ExtractLimits
from daemon.ingest.pipeline import ChunkingParams, Pipeline
from daemon.store.format import Fingerprint, content_hash
from daemon.store.store import FileState, Store

LIMITS = ExtractLimits(max_bytes=10 * 2**20, timeout_s=30, memory_bytes=512 * 2**20)
FP = Fingerprint("f" * 64, "mean", True, 300, 0)
FP_PREFIX = Fingerprint("f" * 64, "mean", True, 300, 0, context_prefix=True)


def para(tag: str) -> str:
    """About 200 characters: two never share a 300-character chunk."""
    return f"{tag}: " + " ".join(f"w{j}" for j in range(45))


SHARED = para("The same words")
DOC = f"# Alpha\n\n{para('First')}\n\n{SHARED}\n\n# Beta\n\n{para('Second')}\n\n{SHARED}\n"


@pytest.fixture
def doc(tmp_path: Path) -> tuple[Path, FileState]:
    path = tmp_path / "guide.md"
    path.write_text(DOC)
    st = path.stat()
    return path, FileState(st.st_size, st.st_mtime_ns, st.st_ino, 3)


def _store(tmp_path: Path, fp: Fingerprint) -> Store:
    return Store.open(tmp_path / "store.json", model="fake-model", dimensions=8, fingerprint=fp)


@pytest.fixture
def prefixed(tmp_path: Path, doc: tuple[Path, FileState]) -> Iterator[tuple[Store, FakeEmbedder]]:
    emb = FakeEmbedder()
    with _store(tmp_path, FP_PREFIX) as store:
        Pipeline(emb, store, ChunkingParams(300, 0, context_prefix=True), LIMITS).index_file(
            doc[0], "in/guide.md", doc[1]
        )
        yield store, emb


def test_only_the_embedded_text_gets_the_prefix(prefixed: tuple[Store, FakeEmbedder]) -> None:
    store, emb = prefixed
    entries = store.source_entries("in/guide.md")
    assert [e.content for e in entries] == [
        f"# Alpha\n\n{para('First')}",
        SHARED,
        f"# Beta\n\n{para('Second')}",
        SHARED,
    ]
    assert [e.section for e in entries] == ["# Alpha", "# Alpha", "# Beta", "# Beta"]
    # A chunk that begins with its heading is embedded as it is; the others get the path.
    assert emb.embedded_texts == [
        f"# Alpha\n\n{para('First')}",
        f"Alpha\n\n{SHARED}",
        f"# Beta\n\n{para('Second')}",
        f"Beta\n\n{SHARED}",
    ]


def test_the_same_words_under_two_sections_keep_two_vectors(prefixed: tuple[Store, FakeEmbedder]) -> None:
    store, emb = prefixed
    alpha, beta = store.source_entries("in/guide.md")[1], store.source_entries("in/guide.md")[3]
    assert alpha.content == beta.content
    assert alpha.hash == content_hash(f"Alpha\n\n{SHARED}") != beta.hash == content_hash(f"Beta\n\n{SHARED}")
    for entry, text in ((alpha, f"Alpha\n\n{SHARED}"), (beta, f"Beta\n\n{SHARED}")):
        hit = store.vector_for_hash(entry.hash)
        assert hit is not None
        assert (hit[0] == emb.expected(text)).all()
    # verify knows a prefixed chunk's hash is its embedded text's: nothing is reported.
    assert [d for d in _check_entries(store) if d.kind == "hash_mismatch"] == []


def test_without_the_prefix_the_same_words_share_one_vector(
    tmp_path: Path, doc: tuple[Path, FileState]
) -> None:
    emb = FakeEmbedder()
    with _store(tmp_path, FP) as store:
        result = Pipeline(emb, store, ChunkingParams(300, 0), LIMITS).index_file(
            doc[0], "in/guide.md", doc[1]
        )
        entries = store.source_entries("in/guide.md")
        assert entries[1].hash == entries[3].hash == content_hash(SHARED)
        assert result.embedded == 3 and emb.embedded_texts.count(SHARED) == 1


def test_a_reindex_with_the_prefix_reuses_every_vector(
    prefixed: tuple[Store, FakeEmbedder], doc: tuple[Path, FileState]
) -> None:
    store, emb = prefixed
    emb.calls.clear()
    result = Pipeline(emb, store, ChunkingParams(300, 0, context_prefix=True), LIMITS).index_file(
        doc[0], "in/guide.md", doc[1]
    )
    assert result.embedded == 0 and result.reused == 4 and emb.calls == []


def test_the_prefix_is_left_out_when_it_would_exceed_the_token_limit() -> None:
    from daemon.ingest.chunker import Chunk, with_context

    text = "a b c d e f"
    chunk = Chunk(text, None, 0, content_hash(text), 8, "# A very long heading indeed")
    assert with_context([chunk], None, count_tokens=lambda t: len(t.split()) + 2, max_tokens=8) == [chunk]
    assert embedding_input(text, None, None) == text
    assert embedding_input(text, "# A > ## B", "Guide") == f"Guide > A > B\n\n{text}"


def test_a_fingerprint_without_the_field_is_the_prefix_off() -> None:
    old = {
        "model_sha256": "f" * 64,
        "pooling": "mean",
        "normalize": True,
        "chunk_size": 300,
        "chunk_overlap": 0,
    }
    assert Fingerprint.from_json(old) == FP
    assert FP.to_json() == old  # a store written with it off keeps its bytes
    assert FP_PREFIX.to_json() == {**old, "context_prefix": True}
    assert Fingerprint.from_json(FP_PREFIX.to_json()) == FP_PREFIX
    assert Fingerprint.from_json({**old, "context_prefix": "yes"}) is None
    assert FP.differences(FP_PREFIX) == ["context_prefix: False -> True"]


def test_an_existing_store_opens_unchanged_until_reembed(tmp_path: Path, doc: tuple[Path, FileState]) -> None:
    emb = FakeEmbedder()
    with _store(tmp_path, FP) as store:
        Pipeline(emb, store, ChunkingParams(300, 0), LIMITS).index_file(doc[0], "in/guide.md", doc[1])
        store.save()
    before = (tmp_path / "store.json").read_bytes()
    assert b"context_prefix" not in before
    with _store(tmp_path, FP) as store:  # the prefix off: it opens as it is
        assert store.count == 4
    with pytest.raises(FingerprintMismatchError) as info:  # turned on: refused, named, untouched
        _store(tmp_path, FP_PREFIX)
    assert "context_prefix: False -> True" in str(info.value) and "--reembed" in str(info.value)
    assert (tmp_path / "store.json").read_bytes() == before
