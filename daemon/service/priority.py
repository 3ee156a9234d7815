"""The daemon's CPU and I/O priority: below interactive work, so a bulk index does not slow it.

Three settings, all per thread on Linux and inherited by the threads a thread creates:
the nice value (``[daemon] nice``), the CPU scheduling policy SCHED_BATCH (the scheduler
treats the thread as a batch job and never lets its wake-ups preempt interactive work) and
the I/O class "idle" (the disk serves it only when nobody else asks; honoured by the BFQ
scheduler, ignored by mq-deadline and none). ``lower_priority`` runs once at startup, before
the daemon creates a thread, so the watcher, the worker, the embedder and llama.cpp's OpenMP
threads all inherit it; called on the main thread it also fixes up any thread that already
exists. An unprivileged process may lower its priority but never raise it back, so nothing
here ever raises one: a value already lower (``Nice=15`` in the unit) is kept.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
from dataclasses import dataclass
from pathlib import Path

IOPRIO_WHO_PROCESS = 1  # "process" means one thread, given by its id
IOPRIO_CLASS_SHIFT = 13
IOPRIO_CLASS_NAMES = {0: "none", 1: "realtime", 2: "best-effort", 3: "idle"}
IOPRIO_CLASS_IDLE = 3
# (ioprio_set, ioprio_get) system call numbers; glibc has no wrapper for them.
_IOPRIO_SYSCALLS = {
    "x86_64": (251, 252),
    "aarch64": (30, 31),
    "riscv64": (30, 31),
    "i686": (289, 290),
    "ppc64le": (273, 274),
    "s390x": (282, 283),
}
_POLICY_NAMES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}
SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5


@dataclass(frozen=True)
class Priority:
    """One thread's priority: nice value, CPU scheduling policy and I/O class."""

    nice: int
    cpu_policy: str
    io_class: str


@dataclass(frozen=True)
class Lowered:
    """What ``lower_priority`` left in force on the calling thread, and what it could not do."""

    priority: Priority
    threads: int
    problems: tuple[str, ...]


def _syscalls() -> tuple[int, int] | None:
    return _IOPRIO_SYSCALLS.get(platform.machine())


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def io_class(tid: int = 0) -> str:
    """The I/O scheduling class of thread ``tid`` (0: the calling one); "unknown" where unsupported."""
    calls = _syscalls()
    if calls is None:
        return "unknown"
    value = _libc().syscall(calls[1], IOPRIO_WHO_PROCESS, tid)
    if value < 0:
        return "unknown"
    return IOPRIO_CLASS_NAMES.get(value >> IOPRIO_CLASS_SHIFT, str(value >> IOPRIO_CLASS_SHIFT))


def _set_io_idle(tid: int) -> None:
    calls = _syscalls()
    if calls is None:
        raise OSError(errno.ENOSYS, f"ioprio_set is not known on {platform.machine()}")
    libc = _libc()
    if libc.syscall(calls[0], IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def current(tid: int = 0) -> Priority:
    """Thread ``tid``'s priority (0: the calling thread)."""
    policy = os.sched_getscheduler(tid) if hasattr(os, "sched_getscheduler") else SCHED_OTHER
    return Priority(
        nice=os.getpriority(os.PRIO_PROCESS, tid),
        cpu_policy=_POLICY_NAMES.get(policy, str(policy)),
        io_class=io_class(tid),
    )


def _thread_ids() -> list[int]:
    try:
        return sorted(int(entry.name) for entry in Path("/proc/self/task").iterdir())
    except OSError:
        return []


def _lower_one(tid: int, nice: int, problems: set[str]) -> None:
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        problems.add(f"nice {nice}: {exc.strerror or exc}")
    if hasattr(os, "sched_setscheduler"):
        try:
            # SCHED_IDLE is lower still: keep it. The nice value survives the change.
            if os.sched_getscheduler(tid) == SCHED_OTHER:
                os.sched_setscheduler(tid, SCHED_BATCH, os.sched_param(0))
        except OSError as exc:
            problems.add(f"SCHED_BATCH: {exc.strerror or exc}")
    try:
        _set_io_idle(tid)
    except OSError as exc:
        problems.add(f"idle I/O class: {exc.strerror or exc}")


def lower_priority(nice: int, *, all_threads: bool) -> Lowered | None:
    """Lower the calling thread (and with ``all_threads`` every thread) below interactive work.

    ``nice`` 0 changes nothing and returns None. Failures (a seccomp filter, a platform
    without these calls) are collected in ``problems``, never raised: priority is a courtesy.
    """
    if nice <= 0:
        return None
    if not 0 < nice <= 19:
        raise ValueError(f"nice must be from 0 to 19, got {nice}")
    problems: set[str] = set()
    own = threading.get_native_id()
    others = [tid for tid in _thread_ids() if tid != own] if all_threads else []
    for tid in (0, *others):
        _lower_one(tid, nice, problems)
    return Lowered(current(), 1 + len(others), tuple(sorted(problems)))
