"""The concurrency limiter and the rate-limit pacer, pure: a simulated clock and simulated servers, so every
assertion is a count or a limit, never a wall-clock time."""

from __future__ import annotations

import asyncio
import heapq
import random

import pytest

from gemantria_dag.llm.limiter import ConcurrencyLimiter, Signal
from gemantria_dag.llm.rate_limits import Pacer, parse_duration, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serve(limiter: ConcurrencyLimiter, clock: Clock, slots: int, service_s: float, calls: int, jitter: float = 0.05):
    """Drive `limiter` against a simulated server with `slots` slots, FIFO queue (events, no sleeping):
    (latencies in call order, limit at each completion)."""
    rnd = random.Random(7)
    free = [0.0] * slots
    events: list[tuple[float, int, float]] = []
    latencies: list[float] = []
    limits: list[int] = []
    left, seq = calls, 0
    while left or events:
        while left and limiter.in_flight < limiter.limit:
            limiter.in_flight += 1  # acquire's fast path, without a loop
            left -= 1
            start = max(clock.now, heapq.heappop(free))
            done = start + service_s * (1 + jitter * rnd.random())
            heapq.heappush(free, done)
            heapq.heappush(events, (done, seq, clock.now))
            seq += 1
        done, _, started = heapq.heappop(events)
        clock.now = done
        latencies.append(done - started)
        limiter.release(started, Signal.OK, done - started)
        limits.append(limiter.limit)
    return latencies, limits


@pytest.mark.parametrize("slots", [1, 2, 4, 8, 16])
def test_the_limit_settles_at_the_hidden_capacity(slots: int) -> None:
    clock = Clock()
    limiter = ConcurrencyLimiter(initial=4, ceiling=64, clock=clock)
    latencies, limits = serve(limiter, clock, slots, 0.2, 60 * slots + 200)
    report = limiter.report()
    assert report.settled == slots, report
    late = sorted(latencies[len(latencies) // 2 :])
    assert late[len(late) // 2] < 0.2 * 1.25  # the median call queues little once settled
    assert max(limits[len(limits) // 2 :]) <= slots + max(1, slots // 8)  # probes stay one above


def test_the_server_word_is_the_start_and_probes_go_one_above() -> None:
    clock = Clock()
    limiter = ConcurrencyLimiter(initial=4, ceiling=16, source="server", clock=clock)
    serve(limiter, clock, 4, 0.2, 400)
    report = limiter.report()
    assert (report.initial, report.settled, report.low, report.high) == (4, 4, 4, 5)


def test_an_explicit_limit_never_moves() -> None:
    clock = Clock()
    limiter = ConcurrencyLimiter(initial=32, ceiling=32, adaptive=False, clock=clock)
    serve(limiter, clock, 2, 0.2, 300)
    limiter.release(clock.now, Signal.OVERLOAD)
    assert (limiter.limit, limiter.report().changes) == (32, 0)


def test_an_overload_cuts_once_per_round_trip() -> None:
    clock = Clock()
    limiter = ConcurrencyLimiter(initial=16, ceiling=32, clock=clock)
    started = clock.now
    clock.now = 1.0
    for _ in range(16):  # 16 calls in flight when the server said 429: one cut, not sixteen
        limiter.in_flight += 1
    for _ in range(16):
        limiter.release(started, Signal.OVERLOAD)
    assert (limiter.limit, limiter.overloads) == (12, 16)
    limiter.in_flight += 1
    limiter.release(clock.now + 0.1, Signal.OVERLOAD)  # a call started after the cut: cut again
    assert limiter.limit == 9


def test_a_batching_server_keeps_the_limit_that_raises_throughput() -> None:
    """Continuous batching: each call is slower with more in a batch, but the whole is faster up to 4 slots
    (llama-server --parallel 4: 2.9 calls/s at 1, 3.3 at 2, 4.3 at 4, queued beyond)."""
    clock = Clock()
    limiter = ConcurrencyLimiter(initial=1, ceiling=16, clock=clock)
    rate = {1: 2.9, 2: 3.3, 3: 3.8, 4: 4.3}
    for _ in range(1500):  # one completion per step, the limit always full (Little's law: latency = L / rate)
        in_service = min(limiter.limit, 4)
        latency = limiter.limit / rate[in_service]
        clock.now += 1.0 / rate[in_service]
        limiter.in_flight = limiter.limit
        limiter.release(clock.now - latency, Signal.OK, latency)
    assert limiter.report().settled == 4


def test_acquire_waits_for_a_slot_and_cancelled_waiters_give_it_on() -> None:
    asyncio.run(_acquire_and_cancel())


async def _acquire_and_cancel() -> None:
    limiter = ConcurrencyLimiter(initial=2, ceiling=2, adaptive=False)
    a = await limiter.acquire()
    await limiter.acquire()
    waiting = [asyncio.ensure_future(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert limiter.in_flight == 2 and not any(w.done() for w in waiting)
    waiting[0].cancel()
    limiter.release(a)
    await asyncio.sleep(0)
    assert waiting[0].cancelled() and waiting[1].done() and not waiting[2].done()
    assert limiter.in_flight == 2
    waiting[2].cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- rate limits


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("7.66s", 7.66),
        ("150us", 0.00015),
        ("2", 2.0),
        ("0", 0.0),
        ("-1", None),  # Azure: no limit
        ("", None),
        (None, None),
        ("soon", None),
        ("1s junk", None),
    ],
)
def test_reset_durations(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == pytest.approx(seconds) if seconds is not None else parse_duration(text) is None


def test_retry_after_ms_is_preferred() -> None:
    assert retry_after_seconds({"retry-after": "2", "retry-after-ms": "1500"}.get) == 1.5
    assert retry_after_seconds({"retry-after": "2"}.get) == 2.0
    assert retry_after_seconds({}.get) is None


def headers(remaining_requests: int, remaining_tokens: int, limit_requests: int = 600, limit_tokens: int = 60000):
    return {
        "x-ratelimit-limit-requests": str(limit_requests),
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": str(limit_tokens),
        "x-ratelimit-remaining-tokens": str(remaining_tokens),
        "x-ratelimit-reset-tokens": "1s",
    }.get


def test_calls_go_at_once_while_the_remote_allows_then_wait_in_order() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    assert pacer.delay(100) == 0.0 and not pacer.active  # nothing said: never waits
    pacer.observe(200, headers(remaining_requests=4, remaining_tokens=60000))  # 600/min: 10 a second
    waits = [pacer.delay(100) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]  # the fourth stays in reserve
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])  # one each tenth of a second, in order
    assert pacer.delay(100, horizon_s=0.25) == pytest.approx(0.4)  # beyond the horizon: not reserved
    assert pacer.delay(100) == pytest.approx(0.4)


def test_tokens_bind_when_the_prompt_and_max_tokens_do_not_fit() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.observe(200, headers(remaining_requests=500, remaining_tokens=1000))  # 60,000/min: 1,000 a second
    assert pacer.delay(800) == 0.0
    # 200 left: 600 more tokens, and 40 in reserve (2 % of the 2,000 the bucket holds), come back in 0.64 s.
    assert pacer.delay(800) == pytest.approx(0.64)


def test_an_answer_to_an_older_request_keeps_what_newer_ones_reserved() -> None:
    """The remote's remainder counts the answered request and those sent before it, not those reserved after it
    nor those still waiting to go out."""
    clock = Clock()
    pacer = Pacer(clock)
    pacer.observe(200, headers(remaining_requests=3, remaining_tokens=60000))  # one stays in reserve
    assert [pacer.delay(10) for _ in range(2)] == [0.0, 0.0]
    older = pacer.mark()
    assert pacer.delay(10) == pytest.approx(0.1)  # reserved, waiting
    waiting = pacer.mark()
    pacer.observe(200, headers(remaining_requests=0, remaining_tokens=60000), older)
    assert pacer.delay(10) == pytest.approx(0.3)  # behind the one reserved after `older`, and the reserve
    last = pacer.mark()
    pacer.observe(200, headers(remaining_requests=0, remaining_tokens=60000), last)
    assert pacer.delay(10) == pytest.approx(0.3)  # `waiting` has not gone out yet: the remote did not count it
    pacer.sent(waiting)
    pacer.sent(last)
    pacer.sent(pacer.mark())
    pacer.observe(200, headers(remaining_requests=0, remaining_tokens=60000), pacer.mark())
    assert pacer.delay(10) == pytest.approx(0.2)  # an answer to the newest, every one sent: only the reserve


def test_a_429_pauses_every_caller_for_its_retry_after() -> None:
    clock = Clock()
    pacer = Pacer(clock)
    pacer.observe(429, {"retry-after": "2"}.get)
    assert pacer.stats.rate_limited == 1
    assert [pacer.delay(10) for _ in range(3)] == [2.0, 2.0, 2.0]  # no limits known: the pause alone
    clock.now = 2.5
    assert pacer.delay(10) == 0.0
