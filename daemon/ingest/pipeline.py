"""One file in, one store update out.

No threads and no I/O of its own: the file is read through ``extract``, vectors come from the
``Embedder`` and everything lands in the ``Store`` passed in. A chunk whose hash the store
already holds (for any file) reuses its vector and timestamp; only unknown hashes are embedded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from daemon.embed.embedder import Embedder, FloatMatrix
from daemon.errors import EmbedError, IndexingInterrupted
from daemon.ingest.chunker import Chunk, chunk_units, with_context
from daemon.ingest.extract import ExtractLimits, extract
from daemon.store.store import FileState, NewEntry, Store

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
# Called with the number of chunks just embedded, for progress and throughput counters.
EmbedProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class IndexResult:
    """What indexing one file did."""

    source: str
    chunks: int
    embedded: int
    reused: int
    tokens: int
    quarantined: int
    seconds: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """A file read, chunked and embedded, not yet applied to the store (``Pipeline.apply``)."""

    source: str
    state: FileState
    entries: list[NewEntry]
    result: IndexResult


@dataclass(frozen=True)
class ChunkingParams:
    """Chunk size and overlap in characters; whether embedded texts get the context prefix."""

    size: int
    overlap: int
    context_prefix: bool = False


class Pipeline:
    """Indexes files into a store with an embedder."""

    def __init__(
        self,
        embedder: Embedder,
        store: Store,
        chunking: ChunkingParams,
        limits: ExtractLimits,
        *,
        batch_size: int = 64,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        clock: Clock = time.perf_counter,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.chunking = chunking
        self.limits = limits
        self.batch_size = batch_size
        self._now_ms = wall_clock_ms
        self._clock = clock

    def index_file(
        self,
        path: Path,
        source: str,
        state: FileState,
        on_embedded: EmbedProgress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> IndexResult:
        """Extract, chunk, embed what is new and replace ``source``'s entries in the store.

        Raises ExtractError when the file cannot be read, and IndexingInterrupted when
        ``should_stop`` turns true between two embedding batches; the store is then left as it was.
        """
        return self.apply(self.prepare(path, source, state, on_embedded, should_stop))

    def prepare(
        self,
        path: Path,
        source: str,
        state: FileState,
        on_embedded: EmbedProgress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Prepared:
        """Extract, chunk and embed what is new, changing nothing: the slow part, which needs no lock.

        Only reads the store (hash lookups), so its one writer may call it without the store's
        lock. Raises ExtractError and IndexingInterrupted as ``index_file`` does.
        """
        start = self._clock()
        extracted = extract(path, self.limits)
        chunks = chunk_units(
            extracted.units,
            size=self.chunking.size,
            overlap=self.chunking.overlap,
            count_tokens=self.embedder.count_tokens,
            max_tokens=self.embedder.max_tokens,
        )
        if self.chunking.context_prefix:
            chunks = with_context(
                chunks,
                extracted.title,
                count_tokens=self.embedder.count_tokens,
                max_tokens=self.embedder.max_tokens,
            )
        known: dict[str, tuple[np.ndarray, int]] = {}
        missing: list[Chunk] = []
        seen_missing: set[str] = set()
        for chunk in chunks:
            if chunk.hash in known or chunk.hash in seen_missing:
                continue
            hit = self.store.vector_for_hash(chunk.hash)
            if hit is not None:
                known[chunk.hash] = hit
            else:
                missing.append(chunk)
                seen_missing.add(chunk.hash)
        reused = sum(1 for c in chunks if c.hash in known)
        fresh, tokens, quarantined = self._embed(source, missing, on_embedded, should_stop)
        known.update(fresh)
        entries = [
            NewEntry(
                content=c.text,
                page=c.page,
                chunk=c.index,
                hash=c.hash,
                vector=known[c.hash][0],
                timestamp=known[c.hash][1],
                section=c.section,
                title=extracted.title,
            )
            for c in chunks
            if c.hash in known
        ]
        result = IndexResult(
            source=source,
            chunks=len(entries),
            embedded=len(fresh),
            reused=reused,
            tokens=tokens,
            quarantined=quarantined,
            seconds=self._clock() - start,
            warnings=extracted.warnings,
        )
        return Prepared(source, state, entries, result)

    def apply(self, prepared: Prepared) -> IndexResult:
        """Make a prepared file's entries the store's (the quick part, under the store's lock)."""
        self.store.replace_source(prepared.source, prepared.entries, prepared.state)
        return prepared.result

    def _embed(
        self,
        source: str,
        chunks: Sequence[Chunk],
        on_embedded: EmbedProgress | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[dict[str, tuple[np.ndarray, int]], int, int]:
        """Vectors for ``chunks`` by hash; chunks the embedder rejects are quarantined (logged, left out)."""
        out: dict[str, tuple[np.ndarray, int]] = {}
        tokens = 0
        quarantined = 0
        if on_embedded is not None and chunks:
            on_embedded(0, len(chunks))  # embedding starts now: a rate is measured from here
        for i in range(0, len(chunks), self.batch_size):
            if should_stop is not None and should_stop():
                raise IndexingInterrupted(f"{source}: stopped after {i} of {len(chunks)} new chunks")
            batch = chunks[i : i + self.batch_size]
            texts = [c.embedded or c.text for c in batch]
            try:
                vectors: FloatMatrix = self.embedder.embed(texts, tokens=[c.tokens for c in batch])
                ok = list(zip(batch, vectors, strict=True))
            except EmbedError:
                # One bad chunk must not cost the file: retry one by one and set the bad ones aside.
                ok = []
                for chunk in batch:
                    try:
                        ok.append(
                            (
                                chunk,
                                self.embedder.embed([chunk.embedded or chunk.text], tokens=[chunk.tokens])[0],
                            )
                        )
                    except EmbedError as exc:
                        quarantined += 1
                        log.warning(
                            "chunk_quarantined",
                            source=source,
                            chunk=chunk.index,
                            page=chunk.page,
                            hash=chunk.hash,
                            reason=str(exc),
                        )
            stamp = self._now_ms()
            for chunk, vector in ok:
                out[chunk.hash] = (np.asarray(vector, dtype=np.float32), stamp)
                tokens += (
                    chunk.tokens
                    if chunk.tokens is not None
                    else self.embedder.count_tokens(chunk.embedded or chunk.text)
                )
            if on_embedded is not None:
                on_embedded(len(ok), len(chunks))
        return out, tokens, quarantined

    def remove(self, source: str) -> None:
        """Drop every entry of ``source``."""
        self.store.remove_source(source)

    def rename(self, old: str, new: str, state: FileState) -> None:
        """Move ``old``'s entries to ``new``: vectors and timestamps stay, nothing is embedded."""
        self.store.rename_source(old, new, state)
