"""Indexing a real source tree with the real daemon: the CPython standard library of the
installed Python, as source code (``preset = "code"``: split along its syntax in the sandboxed
worker) and the same files read as plain text (renamed ``.txt``), one run each.

Reports files/s and chunks/s until every file is indexed, and the time from the daemon's start
until the first search through its socket answers with a hit. The subset is every k-th ``.py``
file outside ``test/`` and ``site-packages/`` (``--files``), so the runs stay short on a shared
machine. Writes nothing but temp folders; the figures go to docs/benchmarks.md by hand.

Usage: python bench/code_index.py [--files 150] [--model models/all-MiniLM-L6-v2.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.daemonproc import ROOT
from bench.machine import describe
from daemon.serve.client import DaemonClient, DaemonRequestError, DaemonUnavailable


def stdlib_files(count: int) -> list[Path]:
    """Every k-th module of the standard library, ``count`` in all."""
    lib = Path(os.__file__).parent
    files = sorted(
        p for p in lib.rglob("*.py") if not {"test", "tests", "site-packages", "idle_test"} & set(p.parts)
    )
    step = max(1, len(files) // count)
    return files[::step][:count]


def run(workdir: Path, model: Path, files: list[Path], *, as_text: bool) -> dict[str, float]:
    src = workdir / "src"
    for i, path in enumerate(files):
        name = f"{i:04d}_{path.stem}" + (".txt" if as_text else ".py")
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, src / name)
    config = workdir / "config.toml"
    watch = 'include = ["*.txt"]' if as_text else 'preset = "code"'
    config.write_text(
        f'[model]\npath = "{model}"\n\n[store]\npath = "data/embeddings.json"\n\n'
        f'[[watch]]\npath = "src"\n{watch}\n\n[daemon]\ndebounce_ms = 200\nlog_format = "json"\n'
    )
    log_path = workdir / "daemon.log"
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            client = DaemonClient(socket_path=workdir / "data" / "embeddings.sock")
            first_answer = None
            while True:
                events = [
                    json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
                ]
                done = [e for e in events if e.get("event") in ("file_indexed", "file_skipped")]
                if first_answer is None:
                    try:
                        if client.search("read a JSON document", 1).get("results"):
                            first_answer = time.perf_counter() - start
                    except (DaemonUnavailable, DaemonRequestError):
                        pass
                if len(done) >= len(files) and first_answer is not None:
                    took = time.perf_counter() - start
                    break
                if proc.poll() is not None:
                    raise RuntimeError(log_path.read_text()[-3000:])
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    indexed = [e for e in events if e.get("event") == "file_indexed"]
    chunks = sum(int(e["chunks"]) for e in indexed)
    return {
        "files": len(indexed),
        "skipped": len(done) - len(indexed),
        "chunks": chunks,
        "seconds": took,
        "files_s": len(indexed) / took,
        "chunks_s": chunks / took,
        "first_answer_s": first_answer,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=150)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2.gguf")
    args = parser.parse_args()
    print(describe())
    files = stdlib_files(args.files)
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files)} files of {Path(os.__file__).parent} ({size / 1e6:.1f} MB), chunk size 500")
    for as_text in (False, True):
        with tempfile.TemporaryDirectory(prefix="embedd-code-bench-") as tmp:
            r = run(Path(tmp), args.model.resolve(), files, as_text=as_text)
        label = "as plain text" if as_text else "as code     "
        print(
            f"{label}: {r['files']:.0f} files ({r['skipped']:.0f} skipped), {r['chunks']:.0f} chunks in "
            f"{r['seconds']:.1f} s: {r['files_s']:.2f} files/s, {r['chunks_s']:.1f} chunks/s; "
            f"first search answered after {r['first_answer_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
