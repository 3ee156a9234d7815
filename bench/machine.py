"""What machine a benchmark ran on: every printed figure comes with this line.

CPU model, logical CPUs and physical cores, the SIMD flags that decide llama.cpp's and
PyTorch's kernels, the load average when the run started (other tenants make figures
meaningless), and the features this llama.cpp build was compiled with. Reads /proc and
imports nothing heavy, so a benchmark can call it before it loads llama.cpp.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that choose kernels for f32/f16/bf16/int8 matrix products on x86 and ARM.
INTERESTING_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The interesting SIMD flags this CPU reports, in a fixed order."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return [f for f in INTERESTING_FLAGS if f in flags]


def physical_cores() -> int:
    """Cores this process may use, hyper-thread siblings counted once."""
    seen = set()
    for cpu in os.sched_getaffinity(0):
        try:
            seen.add(
                Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
            )
        except OSError:
            seen.add(str(cpu))
    return len(seen)


def llama_features() -> str:
    """llama.cpp's own summary of the features it was built with (imports llama_cpp)."""
    from daemon.embed.llama import llama_cpp_module

    info: bytes = llama_cpp_module().llama_print_system_info()
    parts = [p.strip().removeprefix("CPU : ") for p in info.decode(errors="replace").split("|")]
    return " ".join(p.replace(" = 1", "") for p in parts if p.endswith("= 1"))


def describe(*, llama: bool = False) -> str:
    """One paragraph naming the machine; with ``llama``, also llama.cpp's build features."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = (
        f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, {physical_cores()} physical cores; "
        f"flags: {' '.join(cpu_flags()) or 'none of interest'}; "
        f"load average at start: {load}; Python {platform.python_version()}"
    )
    if llama:
        text += f"; llama.cpp built with: {llama_features()}"
    return text


def peer_python(other: str | None) -> str | bool | None:
    """Which Python runs sentence-transformers: None for this one, ``other`` if only it has it.

    False when neither has it installed.
    """
    import importlib.util
    import subprocess

    if importlib.util.find_spec("sentence_transformers") is not None:
        return None
    if other is not None:
        probe = [
            other,
            "-c",
            "import importlib.util as u; print(u.find_spec('sentence_transformers') is not None)",
        ]
        found = subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip()
        if found == "True":
            return other
    return False


def machine_line() -> str:
    """``describe()`` without llama.cpp's build features: one line for a table's heading."""
    return describe()


if __name__ == "__main__":
    print(describe(llama=True))
