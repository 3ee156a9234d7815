"""Vector-database servers for tests and benchmarks, on loopback, always stopped.

``MilvusTestServer`` runs the Milvus 2.3.5 standalone server shipped by the PyPI ``milvus``
package, but launches it itself, because the package's own ``MilvusServer`` cannot be
restarted reliably (see docs/reliability.md, "A Milvus server on loopback"):

- the package probes ports without SO_REUSEADDR, so a port left in TIME_WAIT by the previous
  server (60 s after it died with clients connected) "fails" or, unpinned, silently moves the
  server to the next port, where clients never find it; here every port is pinned and probed
  with SO_REUSEADDR, as the server's own Go listeners bind;
- its start-up wait polls the health endpoint for 180 s even when the process already died;
  here a dead process fails the start at once;
- the embedded etcd listens on 2379/2380 whatever the configuration says, so two servers (or a
  leftover one) collide; here it gets its own ports through an etcd config file
  (``ETCD_CONFIG_PATH``), and every component registers 127.0.0.1 instead of the host's
  first address, so all traffic stays on loopback;
- a restart on the same data waits for the dead server's etcd sessions to expire
  (``common.session.ttl``, 30 s by default); ``session_ttl`` shortens that, at the price of the
  server exiting when frozen (SIGSTOP) for longer than the TTL.

The gRPC ports still listen on every interface (Milvus 2.3.5 has no setting for it); clients
here only ever connect to 127.0.0.1. Each server runs in its own session and dies with the
process that started it (PR_SET_PDEATHSIG), so a killed test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MILVUS_PORTS = 13  # proxy, its internal port, etcd client and peer, 7 components, metrics, spare
ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


# Looked up here, not in the child: dlopen after fork in a threaded process could deadlock.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def _stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM (and SIGCONT, in case it is frozen), then SIGKILL the whole session after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGCONT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def milvus_bin_dir() -> Path:
    """The Milvus binaries, unpacked once per virtualenv (a few seconds, ~0.4 GB)."""
    import milvus  # type: ignore[import-untyped]

    base = Path(sys.prefix) / "share" / f"embedd-test-milvus-{milvus.__version__}"
    milvus._initialize_data_files(str(base))  # skips files whose md5 matches
    return base / "bin"


class MilvusTestServer:
    """A Milvus standalone server for one data folder, on ports from ``port`` up."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        session_ttl: int | None = None,
        time_tick_ms: int = 20,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_ports(MILVUS_PORTS)
        self.session_ttl = session_ttl
        self.time_tick_ms = time_tick_ms
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _configure(self) -> dict[str, str]:
        from milvus import MilvusServerConfig

        class Config(MilvusServerConfig):  # type: ignore[misc]
            def try_bind_port(self, port: int) -> socket.socket | None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                    sock.listen()
                except OSError:
                    sock.close()
                    return None
                return sock

        p = self.port
        cfg = Config()
        # update() pins a port (the bind must succeed); set() would only start a search there.
        cfg.update(
            data_dir=str(self.data_dir),
            proxy_port=p,
            proxy_internal_port=p + 1,
            etcd_port=p + 2,
            root_coord_port=p + 4,
            query_coord_port=p + 5,
            query_node_port=p + 6,
            index_coord_port=p + 7,
            index_node_port=p + 8,
            data_coord_port=p + 9,
            data_node_port=p + 10,
        )
        for role in ROLES:
            cfg.set(f"{role}.ip", "127.0.0.1")
        cfg.set("etcd.endpoints", f"127.0.0.1:{p + 2}")
        # A Strong-consistency read waits for the next time tick: 200 ms by default, which
        # would make each of the tests' many small reads cost that much.
        cfg.set("proxy.timeTickInterval", self.time_tick_ms)
        # Loading a new collection waits for these checks (1 s and 0.5 s by default).
        cfg.set("queryCoord.checkInterval", 100)
        cfg.set("queryCoord.distPullInterval", 100)
        if self.session_ttl is not None:
            cfg.set("common.session.ttl", self.session_ttl)
        cfg.resolve()  # writes configs/milvus.yaml under data_dir
        etcd = self.data_dir / "configs" / "embed-etcd.yaml"
        etcd.write_text(
            "name: default\n"
            f"listen-client-urls: http://127.0.0.1:{p + 2}\n"
            f"advertise-client-urls: http://127.0.0.1:{p + 2}\n"
            f"listen-peer-urls: http://127.0.0.1:{p + 3}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{p + 3}\n"
            f"initial-cluster: default=http://127.0.0.1:{p + 3}\n"
        )
        bin_dir = milvus_bin_dir()
        return dict(
            os.environ,
            DEPLOY_MODE="STANDALONE",
            METRICS_PORT=str(p + 11),
            MILVUS_RUN_DIR=str(self.data_dir / "run"),
            ETCD_CONFIG_PATH=str(etcd),
            LD_LIBRARY_PATH=f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        )

    def start(self, timeout: float = 180.0) -> float:
        """Start the server and wait until it is healthy; returns the seconds it took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = self._configure()
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with (logs / "milvus-stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(milvus_bin_dir() / "milvus"), "run", "standalone"],
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, no locks
            )
        health = f"http://127.0.0.1:{self.port + 11}/healthz"
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus exited with {self.proc.returncode} while starting; see {logs}")
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as resp:
                if b"OK" in resp.read():
                    return time.monotonic() - t0
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"milvus not healthy after {timeout:.0f} s; see {logs}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL: its graceful shutdown can hang for minutes."""
        _stop_process(self.proc, grace)
        self.proc = None

    def kill(self) -> None:
        _stop_process(self.proc, 0.0)
        self.proc = None

    def freeze(self) -> None:
        os.killpg(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def rss_peak_mb(self) -> float:
        """The server's peak resident memory (VmHWM), in MB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


class ChromaTestServer:
    """``chroma run`` (the Rust server in the chromadb wheel) on a loopback port."""

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_ports(1)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> float:
        exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with (self.data_dir / "chroma-server.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [exe, "run", "--path", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, no locks
            )
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma exited with {self.proc.returncode}; see {self.data_dir}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.uri}/api/v2/heartbeat", timeout=2),
            ):
                return time.monotonic() - t0
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"chroma not up after {timeout:.0f} s")

    def stop(self, grace: float = 10.0) -> None:
        _stop_process(self.proc, grace)
        self.proc = None

    def freeze(self) -> None:
        os.killpg(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def rss_peak_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0
