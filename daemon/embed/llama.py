"""The one place llama_cpp is imported: its log goes nowhere (our typed errors tell the user).

Everything that touches llama.cpp (the embedder, the quantizer) gets the module from
``llama_cpp_module()``, so whatever must be set before the native library loads is set once:
the OpenMP wait policy, and the silenced log.
"""

from __future__ import annotations

import os
from types import ModuleType

_LOG_CALLBACK: object = None

# llama.cpp's CPU backend runs every graph op on an OpenMP team and meets at a barrier after
# each. libgomp's default lets a waiting thread spin for 300,000 iterations first: on an idle
# machine that gains a little, but when another process holds one of the cores the spinning
# threads burn the time the late thread needs, and throughput collapses (a 2-core run fell from
# 27 to 11 chunks/s). "passive" makes waiters sleep at once. libgomp reads its environment once,
# when the library loads (the `import llama_cpp`), so it is set here, before that import. A
# llama.cpp built without OpenMP (the Makefile's build) ignores it: its threads are ggml's own
# pool, whose waiting the embedder sets (embed/pool.py).
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
WAIT_POLICY = "passive"


def apply_wait_policy(environ: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """Ask OpenMP's threads to sleep while they wait, unless the user chose otherwise.

    A value the user set (``OMP_WAIT_POLICY=active``, or ``GOMP_SPINCOUNT``, which libgomp
    lets win over the policy) is respected. Returns the policy now in the environment.
    """
    return environ.setdefault(WAIT_POLICY_VARIABLE, WAIT_POLICY)


def llama_cpp_module() -> ModuleType:
    """``llama_cpp``, imported with OpenMP's wait policy set and its log silenced."""
    apply_wait_policy()
    import llama_cpp

    quiet_llama(llama_cpp)
    return llama_cpp


def quiet_llama(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's own log to nowhere; errors reach the user through our typed errors."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def _drop(level: int, text: bytes, user_data: object) -> None:
        return None

    # The C side keeps only the pointer: hold the callback for the life of the process.
    _LOG_CALLBACK = _drop
    llama_cpp.llama_log_set(_drop, None)
