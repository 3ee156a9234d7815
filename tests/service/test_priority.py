"""The daemon runs below interactive work: nice, SCHED_BATCH and the idle I/O class, on every thread.

Priority cannot be raised back without privileges, so each case runs in a child process; the
real daemon's threads are read from the outside.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import Daemon, write_config

from daemon.service import priority

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").exists() or not hasattr(priority.os, "sched_setscheduler"),
    reason="per-thread priority is Linux's",
)

CHILD = """
import json, threading
from daemon.service import priority

def snapshot():
    p = priority.current()
    return [p.nice, p.cpu_policy, p.io_class]

release = threading.Event()
earlier = threading.Thread(target=release.wait)
earlier.start()
{setup}
result = {{}}
def lower():
    result["lowered"] = priority.lower_priority({nice}, all_threads={all_threads})
    later = {{}}
    t = threading.Thread(target=lambda: later.update(p=snapshot()))
    t.start(); t.join()
    result["later"] = later["p"]
    result["caller"] = snapshot()
{call}
earlier_p = priority.current(earlier.native_id)
release.set(); earlier.join()
main_p = priority.current()
lowered = result["lowered"]
print(json.dumps({{
    "caller": result["caller"], "later": result["later"],
    "earlier": [earlier_p.nice, earlier_p.cpu_policy, earlier_p.io_class],
    "main": [main_p.nice, main_p.cpu_policy, main_p.io_class],
    "problems": list(lowered.problems) if lowered else None,
    "threads": lowered.threads if lowered else 0,
}}))
"""


def _child(
    cli_env: dict[str, str], *, nice: int, all_threads: bool, from_thread: bool, setup: str = ""
) -> dict[str, Any]:
    call = (
        "worker = threading.Thread(target=lower); worker.start(); worker.join()" if from_thread else "lower()"
    )
    code = CHILD.format(nice=nice, all_threads=all_threads, call=call, setup=setup)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


LOW = [10, "batch", "idle"]
NORMAL = [0, "other", "none"]


def test_the_whole_process_is_lowered_and_new_threads_inherit(cli_env: dict[str, str]) -> None:
    got = _child(cli_env, nice=10, all_threads=True, from_thread=False)
    assert got["problems"] == []
    assert got["caller"] == got["later"] == got["earlier"] == LOW
    assert got["threads"] == 2


def test_from_a_thread_only_that_thread_and_its_children_are_lowered(cli_env: dict[str, str]) -> None:
    """As when tests run the service on a thread: the host process keeps its priority."""
    got = _child(cli_env, nice=10, all_threads=False, from_thread=True)
    assert got["caller"] == got["later"] == LOW
    assert got["earlier"] == got["main"] == NORMAL


def test_nice_0_changes_nothing(cli_env: dict[str, str]) -> None:
    got = _child(cli_env, nice=0, all_threads=True, from_thread=False)
    assert got["caller"] == got["later"] == got["earlier"] == NORMAL
    assert got["problems"] is None


def test_a_lower_priority_already_set_is_kept(cli_env: dict[str, str]) -> None:
    setup = (
        "import os; os.setpriority(os.PRIO_PROCESS, 0, 15); os.sched_setscheduler(0, 5, os.sched_param(0))"
    )
    got = _child(cli_env, nice=10, all_threads=False, from_thread=False, setup=setup)
    assert got["caller"][:2] == [15, "idle"], "nice 15 and SCHED_IDLE are lower than what we ask"
    assert got["caller"][2] == "idle"


def test_the_real_daemon_runs_every_thread_low(
    tmp_path: Path, default_model: Path, cli_env: dict[str, str]
) -> None:
    cfg = write_config(tmp_path, default_model, daemon="nice = 12")
    (tmp_path / "inbox" / "a.txt").write_text("Embedding makes every thread start: " * 20)
    daemon = Daemon(cfg, cli_env).ready()
    try:
        (event,) = daemon.events("priority_lowered")
        assert (event["nice"], event["cpu_policy"], event["io_class"]) == (12, "batch", "idle")
        tids = sorted(int(p.name) for p in Path(f"/proc/{daemon.proc.pid}/task").iterdir())
        assert len(tids) >= 3, "watchdog's and the worker's threads are running"
        seen = {}
        for tid in tids:
            try:
                seen[tid] = priority.current(tid)
            except OSError:  # the thread ended meanwhile
                continue
    finally:
        assert daemon.stop() == 0
    for tid, p in seen.items():
        assert (p.nice, p.cpu_policy, p.io_class) == (12, "batch", "idle"), f"thread {tid}: {p}"
