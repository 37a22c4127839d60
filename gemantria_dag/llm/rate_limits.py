"""A remote's rate limits, read from its answers' headers, and the pacing of calls that follows. No I/O.

OpenAI's convention (followed by many OpenAI-compatible providers; platform.openai.com/docs/guides/rate-limits):
every answer carries

    x-ratelimit-limit-requests: 1200        requests per minute allowed
    x-ratelimit-remaining-requests: 1187    what is left now
    x-ratelimit-reset-requests: 650ms       until the allowance is whole again (Go-style: 1s, 6m0s, 20ms)

and the same three for `-tokens`. A refused call gets HTTP 429 with `retry-after` (seconds) and sometimes
`retry-after-ms`. A request's cost against the token limit is its prompt tokens plus `max_tokens`.

`Pacer` keeps one backend's picture of what remains and, before each request, answers how long that request
must wait so that it goes out only when the remote will take it (the remainder grows back at `limit / 60`
per second, OpenAI's per-minute limits refilled continuously). Waiting is the caller's (`asyncio.sleep`).
A 429 with a retry-after pauses the whole backend: every call that asks afterwards waits it out too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

# Go's time.Duration text, as OpenAI sends it: "1s", "6m0s", "20ms", "1h2m3.5s", "150us".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# Headers, lower-case (aiohttp's and httpx's header maps are case-insensitive).
LIMIT_REQUESTS = "x-ratelimit-limit-requests"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
RESET_REQUESTS = "x-ratelimit-reset-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
RESET_TOKENS = "x-ratelimit-reset-tokens"
RETRY_AFTER = "retry-after"
RETRY_AFTER_MS = "retry-after-ms"

# Of the remote's allowance, this much (at least 1) is left unused: the remote's clock and ours, and the order in
# which timers fire, differ by a few ms, and an allowance spent to the last request drew a 429 in 1-2 % of calls
# (tests/test_capacity_e2e.py, 1,200 requests a minute); a level kept in reserve costs no throughput.
RESERVE = 0.02

# How far ahead a call reserves the remote's allowance; beyond it, it sleeps this long and asks again. Reserving
# everything ahead paced a long queue at the client's estimate of each call's tokens (prompt characters / 3, the
# remote counted / 4): 0.925 of the allowed rate over 3,754 nouns at 120,000 tokens a minute.
HORIZON_S = 0.25

# The longest pause a single retry-after may impose on the whole backend: a bogus header must not park a run.
MAX_PAUSE_SECONDS = 120.0


def parse_duration(text: str | None) -> float | None:
    """A reset duration in seconds: Go-style ("6m0s", "20ms", "1.5s") or bare seconds ("2", "0.5");
    None when absent or unreadable. Azure answers "0" or "-1" when it has no limit: -1 gives None."""
    if not text:
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if value >= 0 else None
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None  # Azure's -1: no limit


def retry_after_seconds(get: Callable[[str], str | None]) -> float | None:
    """The wait a refused call was told, in seconds: `retry-after-ms` (finer) or else `retry-after`
    (seconds; an HTTP date is left to `errors.parse_retry_after`); None when neither says."""
    ms = _number(get(RETRY_AFTER_MS))
    if ms is not None:
        return ms / 1000.0
    return _number(get(RETRY_AFTER))


@dataclass(slots=True)
class RateLimit:
    """One dimension (requests or tokens) as the remote last described it.

    `limit` per minute; `remaining` at `seen_at` (the pacer's clock, seconds); `reset_s`: until whole again.
    `spent_since` counts what this client sent after `seen_at` (the remote has not reported it yet).
    The allowance grows back to `cap`: `remaining + refill * reset_s` when the reset is given (a remote may
    allow a burst smaller than a minute's worth: 1,200 a minute with 5 s of burst is a cap of 100), else `limit`.
    """

    limit: float
    remaining: float
    reset_s: float | None
    seen_at: float
    spent_since: float = 0.0

    def refill_per_s(self) -> float:
        """How fast the allowance grows back: the per-minute limit spread over the minute."""
        return self.limit / 60.0

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` more fits (0: now), assuming it grows back at `refill_per_s` up to `cap`, and
        keeping `RESERVE` of the cap untouched."""
        rate = self.refill_per_s()
        cap = self.limit if self.reset_s is None else min(self.limit, self.remaining + rate * self.reset_s)
        have = min(max(cap, self.remaining), self.remaining + rate * (now - self.seen_at)) - self.spent_since
        cost += max(1.0, RESERVE * cap)
        if have >= cost:
            return 0.0
        if rate <= 0:
            return self.reset_s or 0.0
        return (cost - have) / rate


def _read(
    get: Callable[[str], str | None], limit_h: str, remaining_h: str, reset_h: str, now: float
) -> RateLimit | None:
    limit, remaining = _number(get(limit_h)), _number(get(remaining_h))
    if limit is None or remaining is None or limit <= 0:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset_s=parse_duration(get(reset_h)), seen_at=now)


@dataclass(slots=True)
class PacerStats:
    """What pacing did over a backend's life: calls that waited for the remote's allowance (and the total
    wait, seconds), 429 answers seen, and the last limits the remote announced (None: never said)."""

    waited_calls: int = 0
    waited_s: float = 0.0
    rate_limited: int = 0
    limit_requests: float | None = None
    limit_tokens: float | None = None


class Pacer:
    """One backend's rate-limit state, shared by every call of that backend (one event loop).

    Before sending, `delay(tokens, horizon_s)`: the seconds to wait (0.0: at once) so that one request of `tokens`
    fits what the remote said remains; within the horizon the request is counted at once (a reservation: callers
    that ask while this one waits queue behind it, in order, without a lock), and `mark()` then names it. After
    each answer, `observe(status, get, mark)`: `get(name)` reads a response header (None when absent), `mark` is
    the answered request's. Cheap when the remote sends no such header: one header lookup per answer, and
    `delay` returns at once while nothing is known.

    What the remote reports counts the requests that reached it before it answered: at least the answered one
    and those reserved before it. Those reserved after it are counted again locally (`spent_since`), so an
    answer to an older request cannot hand out again what newer ones took (without this, 32 workers against a
    bucket of 20 were refused 21 times in 200 calls; with it, none).
    """

    __slots__ = (
        "_clock",
        "_reserved_requests",
        "_reserved_tokens",
        "_unsent",
        "paused_until",
        "requests",
        "stats",
        "tokens",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.requests: RateLimit | None = None
        self.tokens: RateLimit | None = None
        self.paused_until = 0.0
        self.stats = PacerStats()
        # Everything reserved so far (requests, tokens): a request's mark is these totals after its own.
        self._reserved_requests = 0.0
        self._reserved_tokens = 0.0
        # Reservations still waiting to go out, by mark: the remote has counted none of them, whatever it answers.
        self._unsent: dict[tuple[float, float], float] = {}

    @property
    def active(self) -> bool:
        """Whether the remote ever spoke of its limits (else `delay` is always 0)."""
        return self.requests is not None or self.tokens is not None or self.paused_until > 0.0

    def mark(self) -> tuple[float, float]:
        """The request just reserved, as `observe` and `sent` will need it: the totals reserved up to it."""
        return self._reserved_requests, self._reserved_tokens

    def delay(self, tokens: float, horizon_s: float = float("inf")) -> float:
        """Seconds this request must wait before going out (0.0: now). Up to `horizon_s` it is reserved at once
        (`mark()` names it; after waiting, `sent(mark)`); beyond, nothing is reserved: ask again after a while,
        with what newer answers say (a caller that reserves far ahead reserves at its own estimate of the
        cost, and a long queue of such reservations paces at that estimate, not at the remote's count)."""
        if not self.active:
            return 0.0
        now = self._clock()
        wait = max(0.0, self.paused_until - now)
        req, tok = self.requests, self.tokens
        if req is not None:
            wait += req.wait_for(1.0, now + wait)
        if tok is not None:
            wait += tok.wait_for(tokens, now + wait)
        if wait > horizon_s:
            return wait
        if req is not None:
            req.spent_since += 1.0
        if tok is not None:
            tok.spent_since += tokens
        self._reserved_requests += 1.0
        self._reserved_tokens += tokens
        if wait > 0.0:
            self._unsent[(self._reserved_requests, self._reserved_tokens)] = tokens
        return wait

    def sent(self, mark: tuple[float, float]) -> None:
        """A reservation that waited goes out now (or never will: it is forgotten either way)."""
        self._unsent.pop(mark, None)

    def note_wait(self, seconds: float) -> None:
        """A call waited `seconds` in all for the remote's allowance (for `stats`)."""
        if seconds > 0.0:
            self.stats.waited_calls += 1
            self.stats.waited_s += seconds

    def observe(self, status: int, get: Callable[[str], str | None], mark: tuple[float, float] | None = None) -> None:
        """Take what an answer's headers say: the remaining allowances (replacing the local estimate), and on a
        429 the pause it asks for (retry-after-ms / retry-after), applied to every call of the backend. `mark`:
        the answered request's (None: sent before the remote spoke of limits)."""
        if get(REMAINING_REQUESTS) is None and get(REMAINING_TOKENS) is None and status != 429:
            return
        now = self._clock()
        before_requests, before_tokens = mark or (0.0, 0.0)
        # Reserved before the answered request but still waiting (timers fire out of order): not counted either.
        unsent = [(1.0, t) for (r, _), t in self._unsent.items() if r < before_requests]
        req = _read(get, LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS, now)
        tok = _read(get, LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS, now)
        if req is not None:
            req.spent_since = self._reserved_requests - before_requests + len(unsent)
            self.requests = req
            self.stats.limit_requests = req.limit
        if tok is not None:
            tok.spent_since = self._reserved_tokens - before_tokens + sum(t for _, t in unsent)
            self.tokens = tok
            self.stats.limit_tokens = tok.limit
        if status == 429:
            self.stats.rate_limited += 1
            pause = retry_after_seconds(get)
            if pause is None:
                # No retry-after: wait for the dimension that ran out to reset, else a second.
                resets = [d.reset_s for d in (req, tok) if d is not None and d.reset_s is not None and d.remaining < 1]
                pause = max(resets) if resets else 1.0
            self.paused_until = max(self.paused_until, now + min(pause, MAX_PAUSE_SECONDS))
