"""The calls in flight to one backend: a fixed number, or a limit that finds the server's capacity. No I/O.

The adaptive limit is TCP Vegas (Brakmo & Peterson, "TCP Vegas: end to end congestion avoidance on a global
internet", IEEE JSAC 1995) as Netflix's concurrency-limits applies it to request concurrency (`VegasLimit`):
from the lowest round-trip time seen (`base_rtt`, the server unloaded) and a round's mean (`rtt`), the calls
queued at the server are about `queue = limit x (1 - base_rtt / rtt)` (Little's law). Per round (at least
`limit` calls, and `MIN_ROUND` of them, started under the current limit, after `limit` calls of warm-up):

- no queue (`queue <= alpha`): one more (doubling while in slow start, which the first queue ends);
- a queue, but the throughput `in_flight / rtt` rose by more than `THROUGHPUT_GAIN` per call added over the
  nearest limit below that was measured:
  the server batches (llama.cpp's continuous batching makes each call slower and the whole faster), so
  one more;
- a queue and no such gain: down by the whole calls queued (by half at most, as Netflix's
  gradient limit; in slow start not below the last limit without a queue), and no probe above it for
  `PROBE_EVERY` rounds;
- an overload signal (HTTP 429 or 503, a timeout): `limit x BACKOFF` at once (AIMD's multiplicative
  decrease), at most once per round trip.

Why not plain Vegas: its queue threshold (3-6 calls) is a latency of 4-7x the service time at a capacity of
one; here alpha is half a call (a tenth of the limit above 5), and the probes above the capacity are rare, so
latency stays near the service time (benchmarks/capacity.py). A server's own word (LM Studio's
`loaded_instances[].config.parallel`) is the start; below it the limit goes only on evidence (a measured
limit below without less throughput, or an overload).

The fixed limit (a run's explicit `*_concurrency`) is the same object with adapting off: a semaphore.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

MIN_ROUND = 4
# A queue is worth keeping when the throughput rose by at least this fraction per call added since the
# nearest lower limit measured (noise on the loopback 100-200 ms servers: 1-3 % a round; llama-server
# --parallel 4: +14 % from 1 to 2 calls, +30 % from 2 to 4).
THROUGHPUT_GAIN = 0.08
PROBE_EVERY = 4  # rounds at a limit found too high before probing above it again
BACKOFF = 0.75  # the multiplicative decrease on an overload signal
BASE_WINDOW = 8  # rounds whose minimum RTT make `base_rtt` (the server's unloaded time may drift)


class Signal(Enum):
    """How a call ended, for the limiter: a latency sample, an overload, or neither."""

    OK = "ok"  # answered: its RTT is a sample
    OVERLOAD = "overload"  # 429, 503 or a timeout: the server is past its capacity
    IGNORE = "ignore"  # any other failure (a bad request, a refused key): says nothing of capacity


@dataclass(slots=True)
class LimiterReport:
    """What a limiter did, for the run log, the metadata and the call records.

    `settled`: the limit in force for the longest time; `initial` and where it came from (`source`:
    "server" (the server's own word), "default", "explicit" (run config)); `low`/`high`: its range;
    `overloads`: 429/503/timeouts that cut it; `changes`: how often it moved.
    """

    adaptive: bool
    initial: int
    source: str
    ceiling: int
    limit: int
    settled: int
    low: int
    high: int
    overloads: int
    changes: int

    def as_dict(self) -> dict[str, object]:
        """JSON-safe, for Dagster metadata."""
        return {
            "adaptive": self.adaptive,
            "settled": self.settled,
            "final": self.limit,
            "initial": self.initial,
            "initial_source": self.source,
            "range": [self.low, self.high],
            "ceiling": self.ceiling,
            "overloads": self.overloads,
            "changes": self.changes,
        }


@dataclass(slots=True)
class _Round:
    started: float = 0.0
    warmup: int = 0  # samples to skip first: the calls that queued behind the previous limit's
    n: int = 0
    rtt_sum: float = 0.0
    in_flight_sum: float = 0.0
    rtt_min: float = float("inf")


@dataclass(slots=True)
class ConcurrencyLimiter:
    """At most `limit` calls in flight; `acquire()` waits for a slot, `release()` gives it back with how the
    call went. With `adaptive`, `limit` moves between 1 and `ceiling` (see the module docstring); `initial`
    is the start (clamped to the ceiling), `source` says where it came from ("server" keeps the limit at or
    above it unless an overload or a measurement says otherwise). Times are `clock()` seconds.
    """

    initial: int
    ceiling: int
    adaptive: bool = True
    source: str = "default"
    slow_start: bool = True
    clock: Callable[[], float] = time.monotonic
    limit: int = field(init=False)
    in_flight: int = field(init=False, default=0)
    overloads: int = field(init=False, default=0)
    changes: int = field(init=False, default=0)
    _waiters: deque[asyncio.Future[None]] = field(init=False, default_factory=deque)
    _round: _Round = field(init=False, default_factory=_Round)
    _round_minima: deque[float] = field(init=False, default_factory=lambda: deque(maxlen=BASE_WINDOW))
    _throughput: dict[int, float] = field(init=False, default_factory=dict)
    _good: int = field(init=False, default=0)
    _probe_wait: int = field(init=False, default=0)
    _floor_hint: int = field(init=False, default=1)
    _last_cut: float = field(init=False, default=float("-inf"))
    _since: float = field(init=False, default=0.0)
    _time_at: dict[int, float] = field(init=False, default_factory=dict)
    _low: int = field(init=False, default=0)
    _high: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.limit = max(1, min(self.initial, self.ceiling))
        self.initial = self.limit
        self._low = self._high = self.limit
        if self.source == "server":
            self._floor_hint = self.limit
            self.slow_start = False  # the server said how many it serves: probe one above, not double
        self._since = self._round.started = self.clock()
        # The first calls also open the connections: 113 ms for the 100 ms server where later ones took 101,
        # which read as a 13 % throughput gain at the next limit (a batching server, it concluded).
        self._round.warmup = self.limit

    # ------------------------------------------------------------ slots

    async def acquire(self) -> float:
        """Wait for a slot; returns the clock when it was granted (give it back to `release`)."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return self.clock()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.in_flight -= 1  # granted, then cancelled: hand the slot on
                self._wake()
            else:
                try:
                    self._waiters.remove(future)
                except ValueError:
                    pass
            raise
        return self.clock()

    def release(self, started: float, signal: Signal = Signal.IGNORE, rtt: float | None = None) -> None:
        """Give a slot back. `started`: what `acquire` returned; `rtt`: the call's service time in seconds
        (without waits for a rate-limit reset), read when `signal` is OK."""
        in_flight = self.in_flight
        self.in_flight = in_flight - 1
        if self.adaptive:
            if signal is Signal.OK and rtt is not None:
                self._sample(started, rtt, in_flight)
            elif signal is Signal.OVERLOAD:
                self._overload(started)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.limit:
            future = waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    # ------------------------------------------------------------ adapting

    def _set(self, limit: int) -> None:
        limit = max(1, min(limit, self.ceiling))
        if limit == self.limit:
            return
        now = self.clock()
        self._time_at[self.limit] = self._time_at.get(self.limit, 0.0) + now - self._since
        self._since = now
        self.limit = limit
        self.changes += 1
        self._low, self._high = min(self._low, limit), max(self._high, limit)
        # The first `limit` calls under a new limit meet the old one's queue (or its empty slots): their
        # times say little of the new limit (without skipping them the 1-slot server settled at 3).
        self._round = _Round(started=now, warmup=limit)
        if self._waiters:
            self._wake()

    def _overload(self, started: float) -> None:
        self.overloads += 1
        if started < self._last_cut:
            return  # started before the last cut: the same overload, already answered
        self._last_cut = self.clock()
        self.slow_start = False
        self._floor_hint = 1  # the server's word no longer holds
        self._good = max(1, int(self.limit * BACKOFF))
        self._probe_wait = PROBE_EVERY
        self._set(self._good)

    def _sample(self, started: float, rtt: float, in_flight: int) -> None:
        r = self._round
        if started < r.started:
            return  # started under another limit
        if rtt < r.rtt_min:
            r.rtt_min = rtt  # warm-up calls too: no call is faster than the unloaded server
        if r.warmup:
            r.warmup -= 1
            return
        r.n += 1
        r.rtt_sum += rtt
        r.in_flight_sum += in_flight
        if r.n >= self.limit and r.n >= MIN_ROUND:
            self._decide(r)

    def _decide(self, r: _Round) -> None:
        limit = self.limit
        rtt = r.rtt_sum / r.n
        in_flight = r.in_flight_sum / r.n
        self._round_minima.append(r.rtt_min)
        base = min(self._round_minima)
        queue = in_flight * (1.0 - base / rtt) if rtt > 0 else 0.0
        throughput = in_flight / rtt if rtt > 0 else 0.0
        old = self._throughput.get(limit)
        self._throughput[limit] = throughput if old is None else (old + throughput) / 2
        # The throughput at the nearest limit below that was measured (limit - 1, or limit / 2 in slow start).
        lower = max((k for k in self._throughput if k < limit), default=None)
        below = None if lower is None else self._throughput[lower]
        self._round = _Round(started=self.clock())
        busy = in_flight >= limit - 0.5  # else the callers, not the limit, held the calls in flight
        if queue <= max(0.5, 0.1 * limit):
            if busy:
                self._raise()
        elif below is not None and throughput > below * (1.0 + THROUGHPUT_GAIN * (limit - lower)):
            self._round_minima.clear()  # each call is slower at this batch size: that is the new unloaded time
            self._round_minima.append(rtt)
            if busy:
                self._raise()
        elif below is None and limit <= self._floor_hint:
            if busy:
                self._raise()  # at the server's word: look above it, and measure before going below
        else:
            # Down to the capacity the round suggests (limit - queue: exact for a server with N slots), by half
            # at most, as Netflix's gradient limit; in slow start not below the last limit without a queue.
            # The queue's whole calls come off: its fraction is mostly service-time jitter (5 % jitter at 16
            # slots reads as 0.4 of a call), which `limit x base_rtt / rtt` would take off too (settling at 15).
            target = max(limit // 2, limit - max(1, math.floor(queue)))
            if self.slow_start:
                self.slow_start = False
                target = max(self._good, target)
            self._good = max(1, min(target, limit - 1))
            self._probe_wait = PROBE_EVERY
            self._set(self._good)

    def _raise(self) -> None:
        limit = self.limit
        if self.slow_start:
            self._good = limit
            self._set(limit * 2)
            return
        if limit + 1 > max(self._good, self._floor_hint) and self._probe_wait > 0:
            self._probe_wait -= 1
            return
        self._set(limit + 1)

    # ------------------------------------------------------------ reporting

    def report(self) -> LimiterReport:
        """What the limit did so far (`settled`: the limit held longest)."""
        time_at = dict(self._time_at)
        time_at[self.limit] = time_at.get(self.limit, 0.0) + self.clock() - self._since
        settled = max(time_at, key=lambda k: (time_at[k], k)) if self.adaptive else self.limit
        return LimiterReport(
            adaptive=self.adaptive,
            initial=self.initial,
            source=self.source,
            ceiling=self.ceiling,
            limit=self.limit,
            settled=settled,
            low=self._low,
            high=self._high,
            overloads=self.overloads,
            changes=self.changes,
        )
