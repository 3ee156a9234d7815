"""ggml's own thread pool, for a llama.cpp built without OpenMP (``GGML_OPENMP=OFF``).

Without OpenMP, each graph compute runs on a ``ggml_threadpool``. Unless the context has one
attached, ggml makes a throw-away pool for every ``llama_decode`` (its threads are created and
joined each batch). ``ThreadPools`` keeps one pool per thread count instead and attaches the
one the next batch needs, so the adaptive count still moves between two batches: a pool of
N threads runs N (the caller's thread is the first), and a pool's idle workers never run, so a
one-thread batch has no second thread polling beside it.

A pool's ``poll`` level (0 to 100) is how long its workers spin waiting for the next graph
before they sleep on a condition variable (ggml spins ``poll * 131072`` pause instructions,
a few milliseconds of CPU per level). Within a graph ggml's barrier always spins; the poll
level only decides the time between two batches.

llama-cpp-python binds neither ``ggml_threadpool_new`` nor ``llama_attach_threadpool``, so they
are bound here with ctypes, from the libraries the binding itself loaded.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType

from daemon.errors import EmbedError

# ggml.h: GGML_MAX_N_THREADS, the length of the pool parameters' CPU mask.
_MAX_THREADS = 512
# ggml.h's enum ggml_sched_priority: NORMAL keeps the priority the creating thread has (the
# daemon's nice 10 and SCHED_BATCH, which every thread it creates inherits).
PRIO_NORMAL = 0
# ggml_threadpool_params_init's default is 50: after every batch a worker then spins about 0.2 s
# of CPU (measured on the 2-vCPU EPYC) before it sleeps. embedd's pools sleep at once: the
# wake-up costs microseconds per batch of about 100 ms, and a daemon that has nothing to embed
# should use no CPU (docs/benchmarks.md, "ggml's thread pool against OpenMP").
DEFAULT_POLL = 0


class _PoolParams(ctypes.Structure):
    """ggml.h's ``struct ggml_threadpool_params``."""

    _fields_ = (
        ("cpumask", ctypes.c_bool * _MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    )


def uses_openmp(llama_cpp: ModuleType) -> bool:
    """Whether this llama.cpp was built with OpenMP (then ggml's pool has no threads of its own)."""
    info: bytes = llama_cpp.llama_print_system_info()
    return b"OPENMP = 1" in info


class _Lib:
    """The four C functions, bound once per process."""

    def __init__(self, llama_cpp: ModuleType) -> None:
        lib_dir = Path(str(llama_cpp.__file__)).parent / "lib"
        try:
            base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
            cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
        except OSError as exc:
            raise EmbedError(f"cannot load ggml's CPU library from {lib_dir}: {exc}") from exc
        llama = llama_cpp.llama_cpp._lib
        self.params_init = base.ggml_threadpool_params_init
        self.params_init.argtypes = (ctypes.POINTER(_PoolParams), ctypes.c_int)
        self.params_init.restype = None
        self.new = cpu.ggml_threadpool_new
        self.new.argtypes = (ctypes.POINTER(_PoolParams),)
        self.new.restype = ctypes.c_void_p
        self.free = cpu.ggml_threadpool_free
        self.free.argtypes = (ctypes.c_void_p,)
        self.free.restype = None
        self.attach = llama.llama_attach_threadpool
        self.attach.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        self.attach.restype = None
        self.detach = llama.llama_detach_threadpool
        self.detach.argtypes = (ctypes.c_void_p,)
        self.detach.restype = None


_LIB: _Lib | None = None


def _lib(llama_cpp: ModuleType) -> _Lib:
    global _LIB
    if _LIB is None:
        _LIB = _Lib(llama_cpp)
    return _LIB


class ThreadPools:
    """One ggml thread pool per thread count, the right one attached to ``ctx`` before a batch.

    A pool's threads are created by the thread that first asks for its count, and inherit its
    priority. Not thread-safe (neither is the context): the embedder serialises calls.
    """

    def __init__(self, llama_cpp: ModuleType, ctx: ctypes.c_void_p, *, poll: int = DEFAULT_POLL) -> None:
        if not 0 <= poll <= 100:
            raise ValueError(f"poll must be between 0 and 100, got {poll}")
        self._lib = _lib(llama_cpp)
        self._ctx = ctx
        self.poll = poll
        self._pools: dict[int, int] = {}
        self._attached: int | None = None

    @property
    def attached(self) -> int | None:
        """The thread count of the pool attached now (None before the first ``use``)."""
        return self._attached

    def use(self, threads: int) -> None:
        """Attach the pool of ``threads`` threads (made on first use) for the next batches."""
        if threads == self._attached:
            return
        pool = self._pools.get(threads)
        if pool is None:
            params = _PoolParams()
            self._lib.params_init(ctypes.byref(params), threads)
            params.poll = self.poll
            params.prio = PRIO_NORMAL
            made = self._lib.new(ctypes.byref(params))
            if not made:
                raise EmbedError(f"ggml could not start a thread pool of {threads} threads")
            pool = self._pools[threads] = int(made)
        # The same pool for single-token and longer batches, as llama_set_n_threads sets both.
        self._lib.attach(self._ctx, pool, pool)
        self._attached = threads

    def close(self) -> None:
        """Detach from the context and stop every pool's threads (before the context is freed)."""
        if self._attached is not None:
            self._lib.detach(self._ctx)
            self._attached = None
        for pool in self._pools.values():
            self._lib.free(pool)
        self._pools.clear()
