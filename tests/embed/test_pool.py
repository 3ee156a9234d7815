"""ggml's own thread pools (llama.cpp built with GGML_OPENMP=OFF): the vectors are the same at every
poll level and thread count, the pool of the count asked for is the one attached, and at poll 0
its workers sleep between batches. On an OpenMP build the embedder attaches no pool at all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from reference_bert import REFERENCE_TEXTS

from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder, physical_cores
from daemon.embed.llama import llama_cpp_module
from daemon.embed.pool import ThreadPools, uses_openmp

OPENMP = uses_openmp(llama_cpp_module())
needs_pool_build = pytest.mark.skipif(OPENMP, reason="llama.cpp was built with OpenMP (GGML_OPENMP=ON)")
TEXTS = [*REFERENCE_TEXTS, *(f"Paragraph {i} is about subject {i * 5 % 11}." for i in range(100))]


@pytest.fixture(scope="module")
def fixed(default_model: Path) -> Iterator[np.ndarray]:
    """The vectors on one thread, without a pool of our own (ggml's, or OpenMP)."""
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=1, normalize=False, pool_poll=None))
    try:
        yield emb.embed(TEXTS)
    finally:
        emb.close()


def test_a_pool_is_attached_exactly_when_llama_cpp_has_no_openmp(default_model: Path) -> None:
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=2))
    try:
        assert emb.openmp is OPENMP
        assert emb.pool_threads == (None if OPENMP else 2)
    finally:
        emb.close()


@needs_pool_build
@pytest.mark.parametrize("poll", [0, 50, 100, None])
@pytest.mark.parametrize("threads", [1, 2])
def test_vectors_are_bit_identical_at_every_poll_level(
    default_model: Path, fixed: np.ndarray, poll: int | None, threads: int
) -> None:
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=threads, normalize=False, pool_poll=poll))
    try:
        np.testing.assert_array_equal(emb.embed(TEXTS), fixed)
        assert emb.pool_threads == (None if poll is None else threads)
    finally:
        emb.close()


def _ticks(tids: set[int]) -> dict[int, int]:
    ticks = {}
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])
    return ticks


def _tasks() -> set[int]:
    return {int(p.name) for p in Path("/proc/self/task").iterdir()}


@needs_pool_build
@pytest.mark.skipif(
    not Path("/proc/self/task").exists() or physical_cores() < 2, reason="needs Linux and 2 cores"
)
def test_at_poll_0_the_pools_workers_sleep_between_batches(default_model: Path) -> None:
    before = _tasks()
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=2, pool_poll=0))
    try:
        emb.embed(TEXTS)
        workers = _tasks() - before - {threading.get_native_id()}
        assert workers, "the pool of 2 has a worker thread of its own"
        # A sleeping thread gains no clock ticks; one that polls gains one every 10 ms. Poll
        # for a quiet second rather than time it: the first instants may still be the batch's.
        deadline = time.monotonic() + 60
        while True:
            start = _ticks(workers)
            time.sleep(1.0)
            spent = {tid: t - start.get(tid, t) for tid, t in _ticks(workers).items()}
            if not any(spent.values()) or time.monotonic() > deadline:
                break
        assert not any(spent.values()), f"workers kept running between batches: {spent}"
    finally:
        emb.close()


@needs_pool_build
def test_changing_the_thread_count_attaches_that_pool(default_model: Path, fixed: np.ndarray) -> None:
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=2, normalize=False, pool_poll=0))
    try:
        native = emb._native
        for threads in (1, 2, 1):
            native.set_threads(threads)
            assert emb.pool_threads == threads and emb.context_threads == threads
            np.testing.assert_array_equal(emb.embed(TEXTS), fixed)
    finally:
        emb.close()


@pytest.mark.parametrize("poll", [-1, 101])
def test_a_poll_level_outside_0_to_100_is_refused(poll: int) -> None:
    with pytest.raises(ValueError, match="poll"):
        ThreadPools(llama_cpp_module(), None, poll=poll)  # type: ignore[arg-type]
