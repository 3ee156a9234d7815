"""The thread-count controller, driven by a simulated machine: rates per thread count, idle CPUs."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from daemon.embed.threads import AdaptiveThreads, CpuTimes, FixedThreads, read_cpu_times

TICKS = 100  # clock ticks per second, as USER_HZ


class Machine:
    """A CPU whose embedding rate (tokens/s) depends on the thread count and on the other load."""

    def __init__(self, cpus: int, rates: dict[int, float], other_load: float = 0.0) -> None:
        self.cpus = cpus
        self.rates = rates
        self.other_load = other_load  # CPUs kept busy by other processes
        self.now = 0.0
        self.idle_ticks = 0.0
        self.total_ticks = 0.0
        self.noise: Callable[[], float] = lambda: 1.0

    def clock(self) -> float:
        return self.now

    def cpu_times(self) -> CpuTimes:
        return CpuTimes(int(self.idle_ticks), int(self.total_ticks), self.cpus)

    def run(self, seconds: float, threads: int) -> None:
        self.now += seconds
        self.total_ticks += seconds * TICKS * self.cpus
        idle = max(0.0, self.cpus - threads - self.other_load)
        self.idle_ticks += seconds * TICKS * idle

    def pause(self, seconds: float) -> None:
        self.run(seconds, 0)


def controller(machine: Machine, *, idle_signal: bool = True, **kwargs: float) -> AdaptiveThreads:
    return AdaptiveThreads(
        machine.cpus,
        clock=machine.clock,
        cpu_times=machine.cpu_times if idle_signal else None,
        **kwargs,  # type: ignore[arg-type]
    )


def run(ctl: AdaptiveThreads, machine: Machine, batches: int, tokens: int = 500) -> list[int]:
    """Embed ``batches`` native batches; the thread count each one ran on."""
    used = []
    for _ in range(batches):
        threads = ctl.before_batch(tokens)
        seconds = tokens / (machine.rates[threads] * machine.noise())
        machine.run(seconds, threads)
        ctl.after_batch(tokens, seconds)
        used.append(threads)
    return used


IDLE = {1: 1000.0, 2: 1700.0}
HOG_NICE = {1: 1000.0, 2: 550.0}  # one core busy elsewhere, the daemon at nice 10
HOG_SAME = {1: 1000.0, 2: 1050.0}  # one core busy elsewhere, both at nice 0, passive waiting


def test_idle_machine_keeps_every_core_and_probes_less_and_less() -> None:
    machine = Machine(2, IDLE)
    ctl = controller(machine)
    used = run(ctl, machine, 400)  # about 3 minutes of batches
    assert ctl.threads == 2 and ctl.changes == 0
    # The first probe downwards comes at once (the daemon may start on a busy machine), then
    # ever more rarely: one-thread batches are a small part of the run.
    assert used[3:6] == [1, 1, 1]
    assert used.count(1) <= 5 * 3


def test_steps_down_when_a_busy_process_takes_a_core() -> None:
    machine = Machine(2, IDLE)
    ctl = controller(machine)
    run(ctl, machine, 100)
    machine.rates, machine.other_load = HOG_NICE, 1.0
    used = run(ctl, machine, 60)
    # Three batches show the fall, three more try one thread: then one thread it is.
    assert used.index(1) <= 3
    assert ctl.threads == 1
    assert used[8:].count(2) <= 3 * 2, "at most a couple of probes upwards in the rest"


def test_prefers_fewer_threads_when_more_buy_nothing() -> None:
    machine = Machine(2, HOG_SAME, other_load=1.0)
    ctl = controller(machine)
    run(ctl, machine, 30)
    assert ctl.threads == 1


def test_returns_to_every_core_soon_after_the_load_leaves() -> None:
    machine = Machine(2, HOG_NICE, other_load=1.0)
    ctl = controller(machine)
    run(ctl, machine, 200)
    assert ctl.threads == 1
    machine.rates, machine.other_load = IDLE, 0.0
    start = machine.now
    used = run(ctl, machine, 200)
    back = used.index(2)
    # A free core shows at once; a probe may start once 10 s passed since the last one.
    assert machine.now - start < 200 and ctl.threads == 2
    assert back < 10 / (500 / IDLE[1]) + 6, f"took {back} batches"


def test_without_the_idle_signal_periodic_probes_still_find_the_free_core() -> None:
    machine = Machine(2, HOG_NICE, other_load=1.0)
    ctl = controller(machine, idle_signal=False)
    run(ctl, machine, 400)
    assert ctl.threads == 1
    machine.rates, machine.other_load = IDLE, 0.0
    start = machine.now
    while ctl.threads == 1 and machine.now - start < 1000:
        run(ctl, machine, 1)
    assert ctl.threads == 2
    # Probes back off to one every 160 s while they fail; the next one finds the core.
    assert machine.now - start < 160 + 5


def test_a_slowdown_fewer_threads_cannot_fix_changes_nothing() -> None:
    machine = Machine(2, IDLE)
    ctl = controller(machine)
    run(ctl, machine, 60)
    machine.rates = {n: r / 2 for n, r in IDLE.items()}  # say, the CPU clocked down
    used = run(ctl, machine, 200)
    assert ctl.threads == 2 and ctl.changes == 0
    # One trial when the rate falls, then ever rarer probes: not a trial every window.
    assert used.count(1) <= 4 * 3


def test_small_batches_run_on_one_thread_and_are_not_measured() -> None:
    machine = Machine(2, HOG_NICE, other_load=1.0)
    ctl = controller(machine, min_tokens=128)
    used = run(ctl, machine, 500, tokens=40)  # search queries, one by one
    assert set(used) == {1}, "a query is mostly fixed cost: one thread, no meeting after each op"
    assert ctl.threads == 2 and ctl.changes == 0 and ctl.trial_threads is None


def test_cascades_to_the_best_count_on_more_cores() -> None:
    # Four cores, two busy elsewhere: 2 threads are best; 3 barely better than 2.
    machine = Machine(4, {1: 1000.0, 2: 1900.0, 3: 1950.0, 4: 1300.0}, other_load=2.0)
    ctl = controller(machine)
    run(ctl, machine, 60)
    assert ctl.threads == 2
    machine.rates, machine.other_load = {1: 1000.0, 2: 1900.0, 3: 2700.0, 4: 3400.0}, 0.0
    run(ctl, machine, 200)
    assert ctl.threads == 4


def test_noise_does_not_make_it_flap_on_an_idle_machine() -> None:
    machine = Machine(2, IDLE)
    rng = random.Random(7)
    machine.noise = lambda: rng.uniform(0.8, 1.2)
    ctl = controller(machine)
    used = run(ctl, machine, 600)
    assert used.count(2) >= 0.9 * len(used)


def test_a_long_pause_forgets_what_it_knew() -> None:
    machine = Machine(2, IDLE)
    ctl = controller(machine, probe_s=1e6, probe_max_s=1e7)  # only a fall could start a trial
    run(ctl, machine, 40)
    run(ctl, machine, 1)
    assert ctl.trial_threads is None
    machine.pause(3600)
    machine.rates = {1: 500.0, 2: 850.0}  # slower, but the old best must not count
    run(ctl, machine, 3)
    assert ctl.trial_threads is None, "no trial from comparing with an hour-old rate"


def test_changes_are_logged_at_info_at_most_once_a_minute() -> None:
    machine = Machine(2, IDLE)
    ctl = controller(machine)
    with structlog.testing.capture_logs() as logs:
        for _ in range(6):  # the load comes and goes every 20 s or so
            machine.rates, machine.other_load = HOG_NICE, 1.0
            run(ctl, machine, 30)
            machine.rates, machine.other_load = IDLE, 0.0
            run(ctl, machine, 30)
    changes = [e for e in logs if e["event"] == "embed_threads_changed"]
    assert ctl.changes == len(changes) >= 6
    info = [e for e in changes if e["log_level"] == "info"]
    assert 1 <= len(info) <= machine.now / 60 + 1
    assert {"threads", "previous", "tokens_per_s", "previous_tokens_per_s", "reason"} <= set(info[0])


def test_one_core_never_changes() -> None:
    machine = Machine(1, {1: 1000.0})
    ctl = controller(machine)
    assert set(run(ctl, machine, 50)) == {1}


def test_fixed_threads_stay_fixed() -> None:
    fixed = FixedThreads(3)
    for _ in range(10):
        assert fixed.before_batch(500) == 3 and fixed.before_batch(10) == 3
        fixed.after_batch(500, 10.0)
    assert fixed.threads == 3 and not fixed.adaptive
    with pytest.raises(ValueError):
        FixedThreads(0)


def test_read_cpu_times_sums_the_allowed_cpus(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  300 0 100 900 10 0 0 0 0 0\n"
        "cpu0 100 0 50 400 5 0 0 0 0 0\n"
        "cpu1 200 0 50 500 5 0 0 0 0 0\n"
        "cpu2 0 0 0 1000 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    times = read_cpu_times(stat, frozenset({0, 1}))
    assert times == CpuTimes(idle=910, total=1310, cpus=2)
    later = CpuTimes(idle=910 + 150, total=1310 + 200, cpus=2)
    assert later.idle_cpus_since(times) == pytest.approx(1.5)
    assert later.idle_cpus_since(later) is None
    assert read_cpu_times(tmp_path / "missing") is None


def test_read_cpu_times_on_this_machine() -> None:
    times = read_cpu_times()
    if times is None:
        pytest.skip("no /proc/stat here")
    assert times.cpus >= 1 and 0 <= times.idle <= times.total
