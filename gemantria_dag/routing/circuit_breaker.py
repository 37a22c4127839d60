"""A per-backend circuit breaker: open after N consecutive connection failures, half-open after a cool-down."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `threshold` consecutive failures (or a failed half-open trial); after `cooldown_s`
    seconds open it is half-open (one trial call at a time); a success closes it. `clock` gives seconds."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.state: State = "closed"
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self.last_error: str | None = None
        self.times_opened = 0

    def allow(self) -> bool:
        """May a call go to this backend now? In half-open state, one trial call at a time."""
        if self.state == "closed":
            return True
        if self.state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            self.state = "half_open"
        if self.state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """A call succeeded: close the breaker and reset its failure count."""
        self.state = "closed"
        self.consecutive_failures = 0
        self._trial_in_flight = False

    def record_failure(self, error: str) -> None:
        """Count a failure (`error` kept as `last_error`); open at `threshold` in a row, or at once when half-open."""
        self.last_error = error
        self.consecutive_failures += 1
        self._trial_in_flight = False
        if self.state == "half_open" or self.consecutive_failures >= self.threshold:
            if self.state != "open":
                self.times_opened += 1
            self.state = "open"
            self._opened_at = self._clock()

    def release_trial(self) -> None:
        """A half-open trial ended with neither success nor a connection failure."""
        self._trial_in_flight = False
