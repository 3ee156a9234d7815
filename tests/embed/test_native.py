"""The embedder's own native batches: the same vectors as Llama.embed, bit for bit, whatever the
thread count; thread changes and GPU layers really reach llama.cpp; OpenMP's wait policy is set."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from reference_bert import REFERENCE_TEXTS

from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder, physical_cores
from daemon.embed.llama import llama_cpp_module
from daemon.embed.native import pack
from daemon.embed.pool import uses_openmp

needs_openmp = pytest.mark.skipif(
    not uses_openmp(llama_cpp_module()), reason="llama.cpp was built without OpenMP (GGML_OPENMP=OFF)"
)


def test_pack_fills_batches_in_order() -> None:
    assert pack([], 512, 256) == []
    assert pack([512], 512, 256) == [range(0, 1)]
    assert pack([200, 200, 112, 1], 512, 256) == [range(0, 3), range(3, 4)]
    assert pack([300, 300, 300], 512, 256) == [range(0, 1), range(1, 2), range(2, 3)]
    assert pack([2] * 10, 512, 4) == [range(0, 4), range(4, 8), range(8, 10)]


@pytest.mark.parametrize("bad", [[0], [513], [5, -1]])
def test_pack_refuses_what_llama_cpp_would_abort_on(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="tokens"):
        pack(bad, 512, 256)


class Alternating:
    """A thread policy that changes the count before every native batch."""

    def __init__(self, counts: tuple[int, ...]) -> None:
        self.counts = counts
        self.calls = 0
        self.timed: list[tuple[int, float]] = []

    @property
    def threads(self) -> int:
        return self.counts[0]

    @property
    def adaptive(self) -> bool:
        return True

    def before_batch(self, tokens: int) -> int:
        self.calls += 1
        return self.counts[self.calls % len(self.counts)]

    def after_batch(self, tokens: int, seconds: float) -> None:
        self.timed.append((tokens, seconds))

    @property
    def changes(self) -> int:
        return self.calls


TEXTS = [*REFERENCE_TEXTS, *(f"Document number {i} talks about topic {i * 7 % 13}." for i in range(120))]


@pytest.fixture(scope="module")
def raw(default_model: Path) -> Iterator[LlamaEmbedder]:
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=2, normalize=False))
    yield emb
    emb.close()


def test_vectors_equal_llama_embed_bit_for_bit(raw: LlamaEmbedder) -> None:
    ours = raw.embed(TEXTS)
    theirs = np.asarray(raw._llm.embed(TEXTS, normalize=False, truncate=False), dtype=np.float32)
    assert ours.shape == (len(TEXTS), 384)
    np.testing.assert_array_equal(ours, theirs)


def test_changing_threads_between_batches_changes_no_vector(default_model: Path, raw: LlamaEmbedder) -> None:
    fixed = raw.embed(TEXTS)
    policy = Alternating((1, 2))
    moving = LlamaEmbedder(default_model, EmbedderSettings(normalize=False), policy=policy)
    try:
        np.testing.assert_array_equal(moving.embed(TEXTS), fixed)
    finally:
        moving.close()
    assert policy.calls >= 3, "the texts span several native batches"
    tokens = sum(raw.count_tokens(t) for t in TEXTS)
    assert sum(n for n, _ in policy.timed) == tokens, "every batch was timed with its tokens"
    assert all(seconds > 0 for _, seconds in policy.timed)


def test_one_embedder_serves_any_thread(raw: LlamaEmbedder) -> None:
    expected = raw.embed(TEXTS[:40])
    results: list[np.ndarray] = []
    workers = [threading.Thread(target=lambda: results.append(raw.embed(TEXTS[:40]))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(results) == 3
    for result in results:
        np.testing.assert_array_equal(result, expected)


def _cpu_ticks() -> dict[int, int]:
    """utime + stime of every thread of this process."""
    ticks = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def _busy_threads(emb: LlamaEmbedder, texts: list[str]) -> int:
    """How many OS threads did a real share of the work of embedding ``texts``."""
    before = _cpu_ticks()
    emb.embed(texts)
    after = _cpu_ticks()
    spent = [after[tid] - before.get(tid, 0) for tid in after]
    return sum(1 for s in spent if s >= 0.2 * max(spent))


@pytest.mark.skipif(
    not Path("/proc/self/task").exists() or physical_cores() < 2, reason="needs Linux and 2 cores"
)
def test_the_thread_count_set_is_the_one_llama_cpp_runs(default_model: Path) -> None:
    policy = Alternating((1,))
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=2), policy=policy)
    try:
        texts = TEXTS * 2
        policy.counts = (2,)
        emb.embed(texts[:8])
        assert emb.context_threads == 2
        assert _busy_threads(emb, texts) == 2
        policy.counts = (1,)
        emb.embed(texts[:8])
        assert emb.context_threads == 1
        assert _busy_threads(emb, texts) == 1, "the second thread (OpenMP's or ggml's) stays idle, no reload"
    finally:
        emb.close()


def test_fixed_threads_setting(default_model: Path) -> None:
    emb = LlamaEmbedder(default_model, EmbedderSettings(threads=1))
    try:
        assert emb.threads == 1 and not emb.adaptive and emb.context_threads == 1
        emb.embed(TEXTS)
        assert emb.threads == 1 and emb.context_threads == 1
    finally:
        emb.close()


@pytest.mark.parametrize(("layers", "reaches"), [(0, 0), (7, 7), (-1, 2147483647)])
def test_gpu_layers_reach_llama_cpp(default_model: Path, layers: int, reaches: int) -> None:
    """No GPU here: llama.cpp is told the count (and keeps the layers on the CPU)."""
    emb = LlamaEmbedder(default_model, EmbedderSettings(gpu_layers=layers))
    try:
        assert emb.gpu_layers == reaches
        assert emb.embed(["still works on the CPU"]).shape == (1, 384)
    finally:
        emb.close()


_PROBE = "from daemon.embed.llama import llama_cpp_module; llama_cpp_module()"


def _omp_env(env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**env, "OMP_DISPLAY_ENV": "verbose"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stderr


@needs_openmp
def test_openmp_threads_sleep_while_they_wait(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    shown = _omp_env(env)
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown and "GOMP_SPINCOUNT = '0'" in shown, shown


@needs_openmp
def test_a_wait_policy_the_user_set_is_kept(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "GOMP_SPINCOUNT"}
    shown = _omp_env({**env, "OMP_WAIT_POLICY": "active"})
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in shown, shown


def test_no_module_imports_llama_cpp_but_llama_py() -> None:
    root = Path(__file__).resolve().parents[2] / "daemon"
    importers = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if re.search(r"^\s*(import|from) llama_cpp\b", path.read_text(), re.MULTILINE)
    ]
    assert importers == ["embed/llama.py"], "the wait policy must be set before llama.cpp loads"
