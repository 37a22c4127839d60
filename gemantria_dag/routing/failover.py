"""Per-call failover inside a run: the routed backend first, the other while it is down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from gemantria_dag.llm.limiter import ConcurrencyLimiter, Signal
from gemantria_dag.llm.results import CompletionResult, ErrorCode
from gemantria_dag.routing.circuit_breaker import CircuitBreaker

# Only failures that say "the backend is unreachable" trip the breaker; a bad answer does not.
OUTAGE_CODES = frozenset({ErrorCode.CONNECTION_REFUSED, ErrorCode.TIMEOUT})


def limiter_signal(result: CompletionResult, elapsed_s: float) -> tuple[Signal, float | None]:
    """(how the call speaks of the server's capacity, its service time in seconds) for the route's limiter.

    Overload: a 429 on any attempt, a timeout, a 503 (not llama.cpp's "Loading model"). A sample: an answer at
    the first attempt (one cut at max_tokens too: the server did the work), its time less any wait for the
    rate-limit allowance. Anything else says nothing.
    """
    meta = result.metadata
    error = result.error
    if meta.rate_limited or (
        error is not None
        and (
            error.code in (ErrorCode.TIMEOUT, ErrorCode.RATE_LIMITED)
            or (error.code == ErrorCode.SERVER_ERROR and error.http_status == 503)
        )
    ):
        return Signal.OVERLOAD, None
    served = result.ok or (error is not None and error.code == ErrorCode.TRUNCATED)  # cut at max_tokens: served
    if served and meta.attempts == 1:
        waited = meta.rate_limit_wait_ms
        return Signal.OK, (elapsed_s - waited / 1000.0 if waited else elapsed_s)
    return Signal.IGNORE, None


class Completer(Protocol):
    """What a route needs of a backend (the LLM resources are completers)."""

    async def acomplete(
        self,
        *,
        messages: list[dict[str, str]],
        model: str | None,
        temperature: float,
        max_tokens: int,
        response_format: dict[str, Any] | None,
    ) -> CompletionResult:
        """One chat completion; backend failures come back in the result, never raised."""
        ...

    def ensure_pool_size(self, calls_in_flight: int) -> None:
        """Let `calls_in_flight` calls be in flight at once."""
        ...


@dataclass
class Route:
    """One backend of a run: its completer, model, calls in flight and circuit breaker.

    `concurrency` is the most calls in flight (the limiter's ceiling: the run starts that many workers for
    it); `limiter` decides how many go at once (fixed at `concurrency` when none is given).
    """

    name: str  # a route of gemantria_dag.names: LM_STUDIO, REMOTE or ENGINE
    backend: Completer
    model: str | None
    concurrency: int
    breaker: CircuitBreaker
    # Which server answers (recorded with each call), e.g. its base URL.
    server: str | None = None
    limiter: ConcurrencyLimiter = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = ConcurrencyLimiter(initial=self.concurrency, ceiling=self.concurrency, adaptive=False)


@dataclass
class Attempt:
    """One call on one route: its result, and whether that route was the fallback (not the routed backend)."""

    route: Route
    result: CompletionResult
    fallback: bool
    # The route's concurrency limit when this call ended.
    limit: int | None = None


class AllBackendsDown(RuntimeError):
    """Every backend is unreachable; the message names each one and why."""


class FailoverRouter:
    """The routed backend first, the fallback for calls it cannot serve (RFC-080's failover)."""

    def __init__(self, primary: Route, fallback: Route | None) -> None:
        self.primary = primary
        self.fallback = fallback

    @property
    def routes(self) -> list[Route]:
        """The primary route, then the fallback if there is one."""
        return [self.primary] + ([self.fallback] if self.fallback else [])

    def all_down(self) -> bool:
        """True when every route's circuit breaker is open."""
        return all(r.breaker.state == "open" for r in self.routes)

    def outage_message(self) -> str:
        """AllBackendsDown's message: each route, its model and its last error."""
        parts = [f"{r.name} ({r.model}): {r.breaker.last_error or 'unreachable'}" for r in self.routes]
        return "every LLM backend is down: " + "; ".join(parts)

    async def complete(self, **request: Any) -> list[Attempt]:
        """Every attempt made for one request, the last one being the answer (or the final failure).

        `request` holds `acomplete`'s arguments but the model (each route sends its own). A transient
        failure (`LLMError.is_retryable`) goes on to the next route; connection failures and timeouts count
        toward the route's circuit breaker. Raises AllBackendsDown when every route's breaker is open.
        """
        while True:
            attempts: list[Attempt] = []
            for route in self.routes:
                limiter = route.limiter
                started = await limiter.acquire()
                signal, rtt = Signal.IGNORE, None
                try:
                    # Asked inside the slot: calls queued behind a dying backend see the breaker open
                    # instead of each spending a connection failure on it.
                    if not route.breaker.allow():
                        continue
                    result = await route.backend.acomplete(model=route.model, **request)
                    signal, rtt = limiter_signal(result, limiter.clock() - started)
                finally:
                    limiter.release(started, signal, rtt)
                attempts.append(Attempt(route, result, route is not self.primary, limiter.limit))
                if not result.ok and result.error is not None and result.error.is_retryable:
                    # Only "unreachable" counts toward opening the breaker; any transient failure
                    # (a 500 as the server dies, a cut stream) still gets this call another route.
                    if result.error.code in OUTAGE_CODES:
                        route.breaker.record_failure(f"{result.error.code}: {result.error.message}")
                    else:
                        route.breaker.release_trial()
                    continue
                if result.ok:
                    route.breaker.record_success()
                else:
                    route.breaker.release_trial()
                return attempts
            if attempts:
                return attempts
            if self.all_down():
                raise AllBackendsDown(self.outage_message())
            # A half-open trial is in flight on the only usable route: wait for its verdict.
            await asyncio.sleep(0.05)
