"""Where llama.cpp's CPU time goes on two threads: a `perf` profile of each build (issue 22).

Runs the model on 2 fixed threads for ``--seconds`` in a child process under ``perf record``
for each configuration: the OpenMP build spinning (libgomp's default wait policy), the OpenMP
build passive (``OMP_WAIT_POLICY=PASSIVE``, what the daemon sets) and, with ``--pool-python``,
the ``GGML_OPENMP=OFF`` build (ggml's own thread pool). Prints chunks/s and the share of
samples in the top shared objects and in ``ggml_barrier`` / ``ggml_vec_dot_f32`` (the matrix
work), with the machine. Needs ``perf`` (Debian's ``linux-perf``) and the default model.

    python bench/perf_profile.py --pool-python /work/venv-noomp/bin/python
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "all-MiniLM-L6-v2.gguf"
TEXT = "The pump in the basement failed after the storm; the replacement valve arrived two weeks later. " * 4
CHILD = """
import sys, time
import llama_cpp
model, secs = sys.argv[1], float(sys.argv[2])
m = llama_cpp.Llama(model_path=model, embedding=True, n_threads=2, n_threads_batch=2, verbose=False,
                    n_ctx=512, n_batch=512, n_ubatch=512)
text = sys.argv[3]
m.embed([text] * 8)  # warm-up
end = time.perf_counter() + secs
n = 0
while time.perf_counter() < end:
    m.embed([text] * 8)
    n += 8
print(n / secs)
"""


def profile(python: str, env: dict[str, str], seconds: float, data: Path) -> tuple[float, list[str]]:
    cmd = ["perf", "record", "-q", "-F", "499", "-o", str(data), "--", python, "-c", CHILD]
    done = subprocess.run(
        [*cmd, str(MODEL), str(seconds), TEXT], env=env, capture_output=True, text=True, check=True
    )
    rate = float(done.stdout.strip().splitlines()[-1])
    rows: list[str] = []
    for sort, keep in (("dso", 3), ("symbol", 0)):
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", sort],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        lines = [ln for ln in report.splitlines() if re.match(r"\s+[\d.]+%", ln)]
        if keep:
            rows += [" ".join(ln.split()[:2]) for ln in lines[:keep]]
        else:
            picked = [ln.split() for ln in lines if re.search(r"ggml_barrier|ggml_vec_dot_f32", ln)]
            rows += [f"{parts[0]} {next(w for w in parts if w.startswith('ggml_'))}" for parts in picked]
    return rate, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pool-python", help="the python of a venv holding the GGML_OPENMP=OFF build")
    args = parser.parse_args()
    print(describe())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    configs = [
        ("OpenMP, spinning (libgomp's default)", sys.executable, base),
        ("OpenMP, passive (the daemon's setting)", sys.executable, {**base, "OMP_WAIT_POLICY": "PASSIVE"}),
    ]
    if args.pool_python:
        configs.append(("ggml pool (GGML_OPENMP=OFF)", args.pool_python, base))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, python, env) in enumerate(configs):
            rate, rows = profile(python, env, args.seconds, Path(tmp) / f"{i}.data")
            print(f"\n{name}: {rate:.1f} chunks/s on 2 threads")
            for row in rows:
                print(f"  {row}")


if __name__ == "__main__":
    main()
