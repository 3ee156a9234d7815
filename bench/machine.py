"""What machine a benchmark ran on: the CPU model, its vector instruction sets, the core count.

Every figure a benchmark prints goes with this line, so figures from different machines are
never compared by accident.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that decide how fast numeric and parsing code runs; the full list is long.
_INTERESTING = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
)


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of the interesting instruction-set flags it has."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, [f for f in _INTERESTING if f in flags]


def describe() -> str:
    """One line: ``CPU: <model>; flags: avx2 fma ...; <n> logical CPUs``."""
    model, flags = cpu_model_and_flags()
    return f"CPU: {model}; flags: {' '.join(flags) or 'none of interest'}; {os.cpu_count()} logical CPUs"
