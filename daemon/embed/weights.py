"""Which exact weight type runs fastest on this CPU: f32 or f16, timed for a few seconds.

Both are exact enough (cosine >= 0.99999 against the plain-numpy reference, see the tests), but
their speed depends on the CPU: on one Xeon f32 was 20% faster (llamafile's f32 kernel needs
no conversions), on an EPYC f16 was 12% faster (half the bytes through the caches). Rather
than guess from CPU flags, ``time_types`` embeds the same texts with each, alternating rounds
so that other work on the machine weighs on both alike, and ``pick`` keeps the faster one.
q8_0 is never picked: it is not exact, only ever an explicit choice.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.embed.convert import OutType
from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder, physical_cores

EXACT_TYPES: tuple[OutType, ...] = ("f32", "f16")
# f16 must beat f32 by this much to be picked: f32 is the reference-exact one, and a tie on a
# noisy machine should not flip the choice.
F16_MARGIN = 0.03
DEFAULT_SECONDS = 4.0

_SUBJECTS = (
    "The quarterly report",
    "Our support team",
    "The storage cluster",
    "The research group",
    "A small bakery",
    "The night shift",
    "The river survey",
    "The compiler",
)
_REST = (
    "describes the migration plan for the old database before the end of the month.",
    "reviews customer complaints about late deliveries with help from two volunteers.",
    "measures energy use across three data centres despite the missing figures.",
    "documents the safety rules for the warehouse floor in a short appendix.",
    "compares latency spikes in the payment service using data from 2019 to 2024.",
    "rebuilds the maintenance log of the city trams after a long discussion.",
)


def sample_texts(count: int = 16, size: int = 450) -> list[str]:
    """``count`` English chunks of about ``size`` characters, the same on every run."""
    rng = random.Random(11)
    texts = []
    for _ in range(count):
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < size:
            parts.append(f"{rng.choice(_SUBJECTS)} {rng.choice(_REST)}")
        texts.append(" ".join(parts))
    return texts


@dataclass(frozen=True)
class Timing:
    """What one weight type achieved: median tokens/s over ``rounds`` rounds."""

    out_type: OutType
    tokens_per_s: float
    rounds: int


@dataclass(frozen=True)
class Pick:
    """The chosen type, every type's timing, and why."""

    out_type: OutType
    timings: tuple[Timing, ...]
    reason: str

    def rate(self, out_type: OutType) -> float:
        """The tokens/s timed for ``out_type``."""
        return next(t.tokens_per_s for t in self.timings if t.out_type == out_type)


def pick(timings: Mapping[OutType, Timing]) -> Pick:
    """f16 when it beats f32 by ``F16_MARGIN``, else f32."""
    f32, f16 = timings["f32"], timings["f16"]
    ratio = f16.tokens_per_s / f32.tokens_per_s
    if ratio >= 1 + F16_MARGIN:
        chosen: OutType = "f16"
        reason = f"f16 is {ratio:.2f}x as fast as f32 on this CPU"
    else:
        chosen = "f32"
        reason = f"f16 is {ratio:.2f}x as fast as f32 on this CPU (it needs {1 + F16_MARGIN:.2f}x)"
    return Pick(chosen, (f32, f16), reason)


def time_types(
    models: Mapping[OutType, Path],
    *,
    seconds: float = DEFAULT_SECONDS,
    min_rounds: int = 3,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[OutType, Timing]:
    """Embed the same texts with each model in turn for about ``seconds``; tokens/s per type.

    Runs on a fixed thread count (the physical cores), so the types compare like for like.
    """
    texts = sample_texts()
    settings = EmbedderSettings(threads=threads or physical_cores())
    embedders = {kind: LlamaEmbedder(path, settings) for kind, path in models.items()}
    try:
        tokens = sum(len(embedders[next(iter(embedders))].tokenize(t)) for t in texts)
        rates: dict[OutType, list[float]] = {kind: [] for kind in embedders}
        for emb in embedders.values():
            emb.embed(texts[:4])  # warm-up: first-touch of the weights, OpenMP's threads
        started = clock()
        order = list(embedders)
        while clock() - started < seconds or min(len(r) for r in rates.values()) < min_rounds:
            for kind in order:
                t0 = clock()
                embedders[kind].embed(texts)
                rates[kind].append(tokens / max(clock() - t0, 1e-9))
            order.reverse()  # ABBA: neither type always runs first
        return {kind: Timing(kind, statistics.median(values), len(values)) for kind, values in rates.items()}
    finally:
        for emb in embedders.values():
            emb.close()
