"""What machine a benchmark ran on: CPU model, core count and the SIMD flags that matter."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The instruction-set extensions vector code (numpy, llama.cpp, Milvus' knowhere, Lance) picks.
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "asimd",
    "sve",
)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name."""
    for line in _cpuinfo():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD extensions of ``SIMD_FLAGS`` this CPU has."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in SIMD_FLAGS if f in have]
    return []


def describe() -> str:
    """One line for a benchmark's output: model, logical CPUs, SIMD flags."""
    return f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; SIMD: {' '.join(cpu_flags()) or 'unknown'}"
