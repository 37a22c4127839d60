"""Per-call failover inside a run: the routed backend first, the other while it is down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from gemantria_dag.routing.circuit_breaker import CircuitBreaker
from resources.llm.results import RETRYABLE_CODES, CompletionResult, ErrorCode

# Only failures that say "the backend is unreachable" trip the breaker; a bad answer does not.
OUTAGE_CODES = frozenset({ErrorCode.CONNECTION_REFUSED, ErrorCode.TIMEOUT})


class AsyncCompleter(Protocol):
    async def acomplete(self, *, messages: list[dict[str, str]], model: str | None, temperature: float,
                        max_tokens: int, response_format: dict[str, Any] | None) -> CompletionResult: ...


@dataclass
class Route:
    name: str  # "lm_studio" or "remote"
    backend: AsyncCompleter
    model: str | None
    concurrency: int
    breaker: CircuitBreaker
    semaphore: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.concurrency)


@dataclass
class Attempt:
    route: Route
    result: CompletionResult
    fallback: bool


class AllBackendsDown(RuntimeError):
    """Every backend is unreachable; the message names each one and why."""


class FailoverRouter:
    def __init__(self, primary: Route, fallback: Route | None) -> None:
        self.primary = primary
        self.fallback = fallback

    @property
    def routes(self) -> list[Route]:
        return [self.primary] + ([self.fallback] if self.fallback else [])

    def all_down(self) -> bool:
        return all(r.breaker.state == "open" for r in self.routes)

    def outage_message(self) -> str:
        parts = [f"{r.name} ({r.model}): {r.breaker.last_error or 'unreachable'}" for r in self.routes]
        return "every LLM backend is down: " + "; ".join(parts)

    async def complete(self, **request: Any) -> list[Attempt]:
        """Every attempt made for one request, the last one being the answer (or the final failure)."""
        while True:
            attempts: list[Attempt] = []
            for route in self.routes:
                async with route.semaphore:
                    # Asked inside the slot: calls queued behind a dying backend see the breaker open
                    # instead of each spending a connection failure on it.
                    if not route.breaker.allow():
                        continue
                    result = await route.backend.acomplete(model=route.model, **request)
                attempts.append(Attempt(route=route, result=result, fallback=route is not self.primary))
                if not result.ok and result.error is not None and result.error.code in RETRYABLE_CODES:
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
