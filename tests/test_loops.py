"""The one retry schedule of the daemon's loops: doubling or a fixed ladder, with optional jitter."""

from __future__ import annotations

import pytest

from daemon.loops import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_steps_are_followed_and_the_last_repeats() -> None:
    b = Backoff(Clock(), steps=(1.0, 5.0, 30.0))
    assert [b.failed() for _ in range(5)] == [1.0, 5.0, 30.0, 30.0, 30.0]
    b.succeeded()
    assert b.ready() and b.failed() == 1.0


def test_jitter_draws_each_delay_up_to_its_fraction_shorter() -> None:
    draws = iter([0.0, 1.0, 0.5])
    clock = Clock()
    b = Backoff(clock, base=2.0, cap=60.0, jitter=0.5, rng=lambda: next(draws))
    assert b.failed() == 2.0  # no shortening drawn
    assert b.failed() == 2.0  # 4 s, half of it drawn off
    assert b.failed() == 6.0  # 8 s, a quarter off
    assert b.wait_s() == 6.0


def test_two_daemons_failing_together_do_not_retry_at_the_same_instant() -> None:
    a, b = Backoff(Clock(), jitter=0.5), Backoff(Clock(), jitter=0.5)
    delays_a = [a.failed() for _ in range(6)]
    delays_b = [b.failed() for _ in range(6)]
    assert delays_a != delays_b
    assert all(d <= min(60.0, 2.0**i) for i, d in enumerate(delays_a))
    assert all(d >= min(60.0, 2.0**i) / 2 for i, d in enumerate(delays_a))


def test_jitter_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)
