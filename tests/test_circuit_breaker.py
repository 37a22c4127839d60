from __future__ import annotations

import pytest

from gemantria_dag.routing.circuit_breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = Clock()
    cb = CircuitBreaker(threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert cb.allow()
        cb.record_failure("connection_refused")
    assert cb.state == "closed"
    cb.record_failure("timeout")
    assert cb.state == "open" and not cb.allow()
    assert cb.last_error == "timeout" and cb.times_opened == 1


def test_a_success_resets_the_count() -> None:
    cb = CircuitBreaker(threshold=2, cooldown_s=10, clock=Clock())
    cb.record_failure("x")
    cb.record_success()
    cb.record_failure("x")
    assert cb.state == "closed"


def test_half_open_allows_one_trial_then_closes_on_success() -> None:
    clock = Clock()
    cb = CircuitBreaker(threshold=1, cooldown_s=10, clock=clock)
    cb.record_failure("x")
    clock.now += 9.9
    assert not cb.allow()
    clock.now += 0.2
    assert cb.allow()  # the trial
    assert cb.state == "half_open" and not cb.allow()  # only one at a time
    cb.record_success()
    assert cb.state == "closed" and cb.allow()


def test_failed_trial_reopens() -> None:
    clock = Clock()
    cb = CircuitBreaker(threshold=3, cooldown_s=5, clock=clock)
    for _ in range(3):
        cb.record_failure("x")
    clock.now += 6
    assert cb.allow()
    cb.record_failure("still down")
    assert cb.state == "open" and not cb.allow()


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0, cooldown_s=1)
