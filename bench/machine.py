"""What machine a benchmark ran on: CPU model, the SIMD flags that matter to llama.cpp and numpy, cores.

Every figure a benchmark prints comes with ``machine_line()``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that decide which kernels llama.cpp (ggml) and numpy's BLAS use.
RELEVANT_FLAGS = (
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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The relevant SIMD flags this CPU has."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in RELEVANT_FLAGS if f in have]
    except OSError:
        pass
    return []


def machine_line() -> str:
    """One line naming the CPU, its flags and the cores this process may use."""
    cores = len(os.sched_getaffinity(0))
    load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"CPU: {cpu_model()} [{' '.join(cpu_flags())}], {cores} cores usable{load}"
