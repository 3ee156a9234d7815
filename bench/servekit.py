"""Shared pieces of the API benchmarks: a store of N chunks on disk, the daemon in a subprocess,
an HTTP client on its socket, percentiles."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import chunks as corpus_chunks  # noqa: E402

from daemon import log as logsetup  # noqa: E402
from daemon.embed.embedder import EmbedderSettings, LlamaEmbedder  # noqa: E402
from daemon.store.format import content_hash  # noqa: E402
from daemon.store.store import FileState, Fingerprint, NewEntry, Store  # noqa: E402

# The store's own debug events would drown the tables.
logsetup.configure("console", "warning")

QUERIES = [
    "when does the harbour survey start",
    "latency spikes in the payment service",
    "budget for the winter festival",
    "sourdough recipe with rye flour",
    "how rainfall changes the water table",
    "licence terms of third-party libraries",
    "maintenance log of the city trams",
    "onboarding steps for remote engineers",
]


def default_model() -> Path:
    return ROOT / "models" / "all-MiniLM-L6-v2.f32.gguf"


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) and the mean of ``ms``."""
    ordered = sorted(ms)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "mean": statistics.fmean(ordered)}


def write_config(root: Path, model: Path, *, extra: str = "") -> Path:
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(
        f'[model]\npath = "{model}"\n\n[store]\npath = "data/embeddings.json"\n\n'
        f'[[watch]]\npath = "inbox"\n\n[daemon]\nlog_format = "json"\n{extra}\n'
    )
    return cfg


def build_store(root: Path, model: Path, n: int, *, per_file: int = 50, seed: int = 1) -> Path:
    """A config in ``root`` whose store holds ``n`` chunks of files that exist in its inbox.

    The vectors are random unit vectors (embedding 100,000 chunks would take half an hour):
    search latency depends on the matrix's size, not on what the vectors mean. The files are
    real, with the size, mtime and inode the store records, so the daemon's startup scan finds
    nothing to do.
    """
    cfg = write_config(root, model)
    embedder = LlamaEmbedder(model, EmbedderSettings())
    try:
        name, sha, pooling, dims = embedder.name, embedder.fingerprint, embedder.pooling, embedder.dimension
    finally:
        embedder.close()
    rng = np.random.default_rng(seed)
    texts = corpus_chunks(min(n, 2000), seed=seed)
    store = Store.open(
        root / "data" / "embeddings.json",
        model=name,
        dimensions=dims,
        fingerprint=Fingerprint(sha, pooling, True, 500, 50),
    )
    files = math.ceil(n / per_file)
    made = 0
    for f in range(files):
        count = min(per_file, n - made)
        path = root / "inbox" / f"doc{f:05}.txt"
        body = [f"{texts[(made + i) % len(texts)]} [{f}:{i}]" for i in range(count)]
        path.write_text("\n\n".join(body))
        st = path.stat()
        vectors = rng.standard_normal((count, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        entries = [
            NewEntry(t, None, i, content_hash(t), v, 1_764_000_000_000)
            for i, (t, v) in enumerate(zip(body, vectors, strict=True))
        ]
        store.replace_source(f"inbox/{path.name}", entries, FileState(st.st_size, st.st_mtime_ns, st.st_ino))
        made += count
    store.save()
    store.close()
    return cfg


class RunningDaemon:
    """``embedd --config CFG`` in a subprocess, its JSON log in a file, an HTTP client on its socket."""

    def __init__(self, cfg: Path, *args: str, code: Path = ROOT) -> None:
        """``code``: the tree whose ``daemon`` package runs (another checkout, to compare two)."""
        self.cfg = cfg
        self.socket = cfg.parent / "data" / "embeddings.sock"
        self.log_path = cfg.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "--config", str(cfg), *args],
            cwd=code,  # `-m` puts the working directory first on sys.path: it must be ``code``
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://embedd", timeout=timeout
        )

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {self.log_path}")
            if self.socket.exists():
                try:
                    with self.client(timeout=5) as c:
                        if c.get("/healthz").status_code == 200:
                            return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon not ready after {timeout:.0f} s; see {self.log_path}")

    def wait_logged(self, event: str, timeout: float = 600.0) -> float:
        """Until the daemon's log holds ``event`` (e.g. ``keyword_postings_ready``); seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; see {self.log_path}")
            if event.encode() in self.log_path.read_bytes():
                return time.monotonic() - started
            time.sleep(0.2)
        raise RuntimeError(f"no {event} in the daemon's log after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        finally:
            self._log.close()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def embedd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real CLI to completion."""
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"embedd {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc
