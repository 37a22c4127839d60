"""Enrich nouns concurrently through the failover router, recording every call."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from gemantria_dag.control_plane.journal import Journal
from gemantria_dag.control_plane.records import (
    AgentRunRecord,
    CallArgs,
    CallResult,
    EnrichmentBatch,
    NounEnrichment,
    new_record_id,
)
from gemantria_dag.cost.budget import Budget, BudgetExhausted, Hold
from gemantria_dag.cost.prices import ModelPrice, call_cost, estimated_prompt_tokens
from gemantria_dag.enrichment.capacity import capacity_lines
from gemantria_dag.enrichment.parse import parse_insight
from gemantria_dag.enrichment.progress import Progress
from gemantria_dag.enrichment.prompt import build_messages, repair_messages
from gemantria_dag.llm.results import CompletionResult, ErrorCode
from gemantria_dag.names import LOCAL_ROUTES, PRICE_SOURCE_LOCAL
from gemantria_dag.routing.failover import AllBackendsDown, Attempt, FailoverRouter


@dataclass(frozen=True)
class RunInfo:
    """Who is calling, for each record's args_json, and the prices of the run's calls for its result_json.

    `price_by_route`: each remote route's model price (None: unknown, its calls are unpriced); local
    routes need none. `remote_price`: the configured remote model's price, what a local call saves.
    Both are looked up once per run (steps.make_runner), so pricing a call is arithmetic.
    """

    project_id: int
    run_id: str | None
    asset_key: str
    routed_backend: str
    prompt_version: str
    params_hash: str
    temperature: float
    max_tokens: int
    response_format: dict[str, Any] | None
    tool_by_route: dict[str, str]
    price_by_route: dict[str, ModelPrice | None] = field(default_factory=dict)
    remote_price: ModelPrice | None = None


def _price(info: RunInfo, route: str, result: CompletionResult) -> tuple[float | None, float | None, str | None]:
    """(cost_usd, saved_usd, price_source) of one call on `route`: see CallResult."""
    meta = result.metadata
    if route in LOCAL_ROUTES:
        return 0.0, call_cost(info.remote_price, meta.prompt_tokens, meta.completion_tokens), PRICE_SOURCE_LOCAL
    price = info.price_by_route.get(route)
    cost = call_cost(price, meta.prompt_tokens, meta.completion_tokens)
    return cost, None, (price.source if cost is not None else None)  # type: ignore[union-attr]


def _record(
    info: RunInfo,
    noun: dict[str, Any],
    attempt: Attempt,
    prompt_length: int,
    purpose: str,
    violations: list[dict[str, Any]],
    session_id: UUID | None,
) -> AgentRunRecord:
    result: CompletionResult = attempt.result
    meta = result.metadata
    substituted = meta.model if meta.model_substituted else None
    found = list(violations)
    if result.error is not None:
        found.append({"code": str(result.error.code), "message": result.error.message})
    if substituted:
        found.append({"code": "model_substituted", "requested": meta.requested_model, "served": meta.model})
    cost, saved, source = _price(info, attempt.route.name, result)
    return AgentRunRecord(
        project_id=info.project_id,
        session_id=session_id,
        tool=info.tool_by_route[attempt.route.name],
        args=CallArgs(
            model=attempt.route.model,
            requested_model=meta.requested_model,
            prompt_length=prompt_length,
            temperature=info.temperature,
            max_tokens=info.max_tokens,
            strong_id=noun["strong_id"],
            run_id=info.run_id,
            asset_key=info.asset_key,
            partition=noun.get("partition"),
            routed_backend=info.routed_backend,
            backend=attempt.route.name,
            fallback=attempt.fallback,
            server=attempt.route.server,
            prompt_version=info.prompt_version,
            purpose=purpose,  # type: ignore[arg-type]
        ),
        result=CallResult(
            ok=result.ok,
            response_length=len(result.response or ""),
            latency_ms=meta.latency_ms,
            ttft_ms=meta.ttft_ms,
            tokens_per_second=meta.tokens_per_second,
            prompt_tokens=meta.prompt_tokens,
            completion_tokens=meta.completion_tokens,
            attempts=meta.attempts,
            error_code=str(result.error.code) if result.error else None,
            finish_reason=meta.finish_reason,
            substituted_model=substituted,
            cost_usd=cost,
            saved_usd=saved,
            price_source=source,
            concurrency_limit=attempt.limit,
            rate_limited=meta.rate_limited or None,
            rate_limit_wait_ms=meta.rate_limit_wait_ms,
        ),
        violations=found,
    )


@contextmanager
def _short_gc_pauses() -> Iterator[None]:
    """Keep the cyclic garbage collector from stalling the calls in flight.

    A full collection walks every object in the process (Dagster, pandas, the lexicon: about
    260,000 when a run starts) while every call in flight waits: at C=64 against a 200 ms
    server, two of them per run took 0.3-0.8 s of a 12-16 s run (up to 0.44 s at once), and the
    client CPU per call dropped by about 0.05 ms without them. Freezing the heap as it is when
    the calls start leaves the collector only the objects made during the run; unfreezing at the
    end hands the old ones back to it. Nothing leaks: objects freed by reference counting go as
    usual, and cyclic garbage among the frozen ones is collected after the run.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class EnrichmentRunner:
    """Enriches nouns concurrently through `router` (`run`), for one run described by `info`.

    Every call's record and every noun's outcome go into `batch`; the nouns left without an answer into
    `failed_nouns`; how each noun ended into `tally`. `log` gets a progress line every `progress_interval_s`
    seconds; the first calls are spread over `ramp_up_s` seconds.
    """

    def __init__(
        self,
        router: FailoverRouter,
        info: RunInfo,
        log: Callable[[str], None],
        progress_interval_s: float = 5.0,
        ramp_up_s: float = 0.0,
        budget: Budget | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.router = router
        # Every request is noted before it is sent and every answer as it arrives (journal.py): a run that dies
        # loses nothing it was answered, and its next run pays again only for the calls that were in flight.
        self.journal = journal
        self.info = info
        self.log = log
        self.progress_interval_s = progress_interval_s
        self.ramp_up_s = ramp_up_s
        self.budget = budget or Budget()
        # A call's worst case is priced at the dearest of the run's routes: which route serves a call is
        # decided inside the router, after the budget must be asked. Local routes cost 0.
        prices = [info.price_by_route.get(r.name) for r in router.routes if r.name not in LOCAL_ROUTES]
        self._worst_price = max(
            (p for p in prices if p is not None),
            key=lambda p: (p.input_usd_per_mtok, p.output_usd_per_mtok),
            default=None,
        )
        self.batch = EnrichmentBatch()
        self.failed_nouns: list[str] = []
        # How each noun ended: "ok", a violation kind, or the error code of a failed call.
        self.tally: Counter[str] = Counter()
        # Parsed once, shared by every record of the run (a UUID is immutable).
        self._session_id = UUID(info.run_id) if info.run_id else None

    async def _call(
        self, noun: dict[str, Any], messages: list[dict[str, str]], purpose: str
    ) -> tuple[Attempt | None, list[AgentRunRecord], UUID]:
        """One request (its attempts on one or two routes), recorded, and its journal id (the caller says when its
        records are final: `_done`); raises BudgetExhausted, without calling, when the budget cannot cover the
        request's worst case."""
        prompt_length = sum(len(m["content"]) for m in messages)
        hold = await self._hold(prompt_length, len(messages)) if self.budget.limited else None
        request_id = new_record_id()
        if self.journal is not None:
            self.journal.intent(request_id, noun["strong_id"], noun.get("partition"), purpose, prompt_length)
        try:
            attempts = await self.router.complete(
                messages=messages,
                temperature=self.info.temperature,
                max_tokens=self.info.max_tokens,
                response_format=self.info.response_format,
            )
            records = [_record(self.info, noun, a, prompt_length, purpose, [], self._session_id) for a in attempts]
        except AllBackendsDown:
            if hold is not None:
                self.budget.release(hold)
            self._done(request_id, [])  # raised before any route was tried: nothing was sent
            raise
        except BaseException:
            # Cancelled in flight: the server may have answered; the journal's close records it as worker_died.
            if hold is not None:
                self.budget.release(hold)  # never left held: calls waiting for room would wait forever
            raise
        if hold is not None:
            self.budget.settle(hold, (r.result for r in records))
        return (attempts[-1] if attempts else None), records, request_id

    def _done(self, request_id: UUID, records: list[AgentRunRecord]) -> None:
        if self.journal is not None:
            self.journal.done(request_id, records)

    async def _hold(self, prompt_length: int, messages: int) -> Hold:
        """Hold this request's worst case against the budget: estimated prompt + max_tokens, dearest route."""
        prompt = estimated_prompt_tokens(prompt_length, messages)
        usd = call_cost(self._worst_price, prompt, self.info.max_tokens) or 0.0  # no priced route: 0
        return await self.budget.reserve(usd, prompt + self.info.max_tokens)

    async def enrich_one(self, noun: dict[str, Any]) -> None:
        """Call for one noun (and once more to repair a reply that does not validate); record every call.

        The noun ends with an outcome (an insight, or a violation: a reply that does not validate, or
        one cut by max_tokens, which the same budget would cut again: no repair call for it), or in
        `failed_nouns` when its last call failed for a transient reason (the next run calls again).
        """
        messages = build_messages(noun)
        final, records, request_id = await self._call(noun, messages, "enrich")
        insight, problem = None, None
        if final is not None and final.result.ok:
            insight, problem = parse_insight(final.result.response)
            if problem:
                records[-1].violations.append({"code": "schema_violation", "message": problem})
                self._done(request_id, records)
                try:
                    final, more, request_id = await self._call(
                        noun, repair_messages(messages, final.result.response or "", problem), "repair"
                    )
                except (AllBackendsDown, BudgetExhausted):
                    # The first call was made (and maybe paid): its record is kept. The noun has no outcome,
                    # so the next run calls for it afresh.
                    self.batch.records.extend(records)
                    raise
                records.extend(more)
                if final is not None and final.result.ok:
                    insight, problem = parse_insight(final.result.response)
                    if problem:
                        more[-1].violations.append({"code": "schema_violation", "message": problem})
                self._done(request_id, more)
            else:
                self._done(request_id, records)
        else:
            self._done(request_id, records)
        failure = None if final is None else final.result.error
        kind = "ok" if insight is not None else "violation"
        if failure is not None and failure.code == ErrorCode.TRUNCATED and not failure.is_retryable:
            problem, kind = failure.message, "truncated"  # a verdict at this budget, not a transient fault
        elif failure is not None or final is None:
            self.batch.records.extend(records)
            self.failed_nouns.append(noun["strong_id"])
            self.tally[failure.code.value if failure is not None else "no_backend"] += 1
            return
        self.batch.records.extend(records)
        outcome = NounEnrichment(
            strong_id=noun["strong_id"],
            model=final.route.model or "",
            prompt_version=self.info.prompt_version,
            params_hash=self.info.params_hash,
            backend=final.route.name,
            ok=insight is not None,
            insight=insight,
            violation=problem,
            record_id=records[-1].id,
        )
        self.batch.enrichments.append(outcome)
        if self.journal is not None:
            self.journal.outcome(outcome)
        self.tally[kind] += 1

    async def run(self, nouns: list[dict[str, Any]]) -> EnrichmentBatch:
        """Enrich `nouns`; self.batch holds what was done, also when this raises.

        Raises AllBackendsDown if every backend dies, BudgetExhausted (one message: the budget, the spend,
        the nouns left) when the budget cannot cover the next call. Either way no new call starts, and the
        calls in flight finish and are recorded before it raises.
        """
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for noun in nouns:
            queue.put_nowait(noun)
        progress = Progress(len(nouns), self.log, self.progress_interval_s, self.tally)
        workers = max(1, min(len(nouns), sum(r.concurrency for r in self.router.routes)))

        # The first reason to stop sending calls: every backend down, or the budget spent.
        stop: list[AllBackendsDown | BudgetExhausted] = []

        async def worker(i: int) -> None:
            if self.ramp_up_s > 0 and i:
                # Spread the first calls over the ramp: calls started together come back together,
                # and each burst queues on the server and on this loop (measured through Dagster at
                # C=16 against the 200 ms server: 74.9 -> 76.4 calls/s with a 0.2 s ramp, net of it).
                await asyncio.sleep(i * self.ramp_up_s / workers)
            # On an outage or at the budget, stop taking nouns but let calls in flight finish: their records count.
            while not stop:
                try:
                    noun = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    await self.enrich_one(noun)
                except AllBackendsDown as exc:
                    stop.append(exc)
                    self.failed_nouns.append(noun["strong_id"])
                    return
                except BudgetExhausted as exc:
                    stop.append(exc)  # not a failure: the noun is left for the next run
                    return
                progress.done += 1

        reporter = asyncio.create_task(progress.report_until_done())
        try:
            with _short_gc_pauses():
                await asyncio.gather(*(worker(i) for i in range(workers)))
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        for line in capacity_lines(self.router, self.batch.records):
            self.log(line)
        if stop and isinstance(stop[0], BudgetExhausted):
            # Worded now, after the calls in flight came back: the spend and the nouns left are final.
            left = len(nouns) - len(self.batch.enrichments)
            raise BudgetExhausted(self.budget.exhausted_message(nouns_left=left, nouns=len(nouns)))
        if stop:
            raise stop[0]
        if nouns:
            self.log(progress.line())
        return self.batch


__all__ = ["AllBackendsDown", "BudgetExhausted", "EnrichmentRunner", "RunInfo"]
