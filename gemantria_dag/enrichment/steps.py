"""The steps of the `noun_enrichments` asset, each a tested function: decide the route, tag the run,
plan the work, run it, save on an outage, build the result. The asset (assets/noun_enrichments.py)
is their sequence; storage comes in as the small protocols below, so this module needs no resource."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DagsterRunStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
)

from gemantria_dag.control_plane.journal import JournalHeader
from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from gemantria_dag.control_plane.store import OutcomeStore, StoreRejects
from gemantria_dag.cost.budget import Budget
from gemantria_dag.cost.daily import daily_remote_budget
from gemantria_dag.cost.prices import ModelPrice, price_for
from gemantria_dag.enrichment.capacity import capacity_report
from gemantria_dag.enrichment.config import EnrichmentConfig
from gemantria_dag.enrichment.partitions import LETTER_NAMES
from gemantria_dag.enrichment.plan import build_router, nouns_for_partitions, tool_by_route
from gemantria_dag.enrichment.progress import tally_text
from gemantria_dag.enrichment.prompt import params_hash, response_format
from gemantria_dag.enrichment.runner import AllBackendsDown, BudgetExhausted, EnrichmentRunner, RunInfo
from gemantria_dag.enrichment.stats import check_verdicts, run_stats
from gemantria_dag.llm.health import HealthCheck
from gemantria_dag.names import (
    BACKEND_TAG,
    ENGINE,
    LM_STUDIO,
    LOCAL_ROUTES,
    META_MODEL,
    META_PROMPT_VERSION,
    NO_BACKEND,
    NOUN_ENRICHMENTS,
    REMOTE,
)
from gemantria_dag.routing.decision import RoutingDecision, forced_decision
from gemantria_dag.routing.failover import Completer
from gemantria_dag.routing.live import decide_now
from gemantria_dag.settings import Settings

CHECKS = ("coverage", "failure_rate", "confidence_in_range", "no_empty_insight", "failed_nouns")
# A run that got no answer for more than `max_failure_rate` of its nouns fails (the CLI exits 1) after
# its outcomes and call records are stored: Dagster runs the IO manager before it fails a step on a
# blocking check. Answers that do not validate (violations, truncated) fail `failure_rate`, which
# reports without failing the run: the answers came, and they are stored.
BLOCKING_CHECKS = frozenset({"failed_nouns"})
_IN_PROGRESS = frozenset({DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING})
# Run statistics that build_result wraps in a MetadataValue of their own.
_TYPED_STATS = frozenset({"backend_mix", "cost_usd", "saved_usd", "unpriced_calls", "total_tokens"})


def check_specs() -> list[AssetCheckSpec]:
    """The asset's checks; `failed_nouns` blocks (fails the run), the others only report."""
    return [AssetCheckSpec(name, asset=NOUN_ENRICHMENTS, blocking=name in BLOCKING_CHECKS) for name in CHECKS]


class Backend(HealthCheck, Completer, Protocol):
    """An LLM backend as the asset uses it: health, completions, and closing its pools."""

    async def aclose(self) -> None:
        """Close the backend's HTTP pools (after the run's calls)."""
        ...


def decide_route(config: EnrichmentConfig, backends: Mapping[str, Backend], settings: Settings) -> RoutingDecision:
    """The run's decision: live health and RFC-080's rule for `backend: auto` (the embedded engine as the
    last resort), else the sensor's choice. A decision for the embedded engine starts it.

    Raises dagster.Failure (naming every backend and why) when no backend is available or the engine
    cannot start.
    """
    if config.backend == "auto":
        engine = backends.get(ENGINE)
        decision, _, _ = decide_now(backends[LM_STUDIO], backends[REMOTE], settings, engine)
    else:
        decision = forced_decision(config.backend, settings, config.routing_reasons)
    if decision.backend == NO_BACKEND:
        raise Failure(
            description=f"no LLM backend available: {'; '.join(decision.reasons)}",
            metadata={"reasons": MetadataValue.json(decision.reasons)},
        )
    if decision.backend == ENGINE:
        engine = backends[ENGINE]
        try:
            engine.ensure_started()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - EngineFileError / EngineStartError: one clear line
            raise Failure(description=f"the embedded engine did not start: {exc}") from None
    return decision


def tag_run(context: AssetExecutionContext, decision: RoutingDecision) -> None:
    """Runs launched by hand decide at start: tag them too, so the UI shows every run's backend."""
    if BACKEND_TAG not in context.run.tags:
        context.instance.add_run_tags(context.run_id, {BACKEND_TAG: decision.backend})


@dataclass(frozen=True)
class WorkPlan:
    """Which nouns a run covers, which already have an outcome, and which it must call for."""

    partitions: list[str]
    nouns_in_scope: int
    nouns: list[dict[str, Any]]
    cached: dict[str, NounEnrichment]
    todo: list[dict[str, Any]]
    params_hash: str

    def summary(self, model: str | None, prompt_version: str) -> str:
        """One line for the run log: nouns in the partitions, those already enriched, those to call."""
        return (
            f"{len(self.nouns)} nouns in {','.join(self.partitions)}: {len(self.cached)} already enriched for "
            f"({model}, {prompt_version}), {len(self.todo)} to call"
        )


def plan_work(
    noun_gematria: pd.DataFrame,
    partitions: list[str],
    config: EnrichmentConfig,
    decision: RoutingDecision,
    cache: OutcomeStore,
) -> WorkPlan:
    """The nouns of `partitions` (at most `config.limit`), minus those with a stored outcome for the
    decision's model, the prompt version and the parameters (violations too, unless `retry_violations`).

    The store's first look-up recovers the journals of runs that died (their answers count as stored), so a
    run resumed after a crash calls only for the nouns whose answer never became durable."""
    nouns = nouns_for_partitions(noun_gematria, partitions)
    in_scope = len(nouns)
    if config.limit is not None:
        nouns = nouns[: config.limit]
    p_hash = params_hash(temperature=config.temperature, max_tokens=config.max_tokens)
    cached = cache.lookup([n["strong_id"] for n in nouns], decision.model or "", config.prompt_version, p_hash)
    if config.retry_violations:
        cached = {k: v for k, v in cached.items() if v.ok}
    todo = [n for n in nouns if n["strong_id"] not in cached]
    return WorkPlan(partitions, in_scope, nouns, cached, todo, p_hash)


def reap_dead_runs(context: AssetExecutionContext, run_ids: Iterable[str]) -> list[str]:
    """Mark failed the runs whose processes died (their journals were just recovered) but that Dagster still
    shows as in progress, and free their pool slots; return their ids.

    A run killed with its process group (SIGKILL, the OOM killer, a lost node) reports nothing: launched by the
    Dagster CLI it stays "started" for ever and keeps its slot of the `llm_enrichment` pool, so that after two
    such kills every later enrichment run waits for a slot that is never freed (seen here). Under `dagster dev`
    the code server notices its run worker gone and the daemon's run monitoring frees the slots; this is the
    same for runs nobody watches.
    """
    reaped = []
    for run_id in dict.fromkeys(run_ids):
        run = context.instance.get_run_by_id(run_id)
        if run is None or run_id == context.run_id or run.status not in _IN_PROGRESS:
            continue
        context.instance.report_run_failed(
            run, message=f"its processes died (found by run {context.run_id}, which replayed its journal)"
        )
        context.instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        reaped.append(run_id)
    if reaped:
        context.log.warning(
            f"marked failed {len(reaped)} run(s) whose processes died: {', '.join(reaped)}; their answers were "
            "replayed from their journals (the calls in flight are recorded as worker_died) and their pool slots freed"
        )
    return reaped


def _set_price_hint(model: str) -> str:
    price = '{"input": <USD per 1M input tokens>, "output": <USD per 1M output tokens>}'
    return f"""set LLM_PRICES='{{"{model}": {price}}}'"""


def run_prices(
    routes: Iterable[tuple[str, str | None]], settings: Settings, log_warning: Callable[[str], None]
) -> tuple[dict[str, ModelPrice | None], ModelPrice | None]:
    """The run's prices, looked up once: each remote route's (by route name, from its (name, model)), and the
    configured remote model's (`REMOTE_LLM_MODEL`, what local calls save; None when unset or unknown).

    A remote model without a price is named once in the run log, with the fix (LLM_PRICES): its calls are
    recorded unpriced, never with a guessed number.
    """
    provider = settings.remote_llm_provider
    by_route = {name: price_for(model, provider, settings) for name, model in routes if name not in LOCAL_ROUTES}
    remote = settings.remote_llm_model
    remote_price = price_for(remote, provider, settings)
    unknown = sorted({m for n, m in routes if n not in LOCAL_ROUTES and m and by_route[n] is None})
    if remote and remote_price is None and remote not in unknown:
        unknown.append(remote)
    for model in unknown:
        log_warning(
            f"no price for the remote model {model!r} (provider {provider}) in LLM_PRICES or genai-prices: its calls "
            f"are recorded with cost_usd null (unpriced) and local calls with saved_usd null; {_set_price_hint(model)}"
        )
    return by_route, remote_price


def make_runner(
    context: AssetExecutionContext,
    config: EnrichmentConfig,
    decision: RoutingDecision,
    plan: WorkPlan,
    backends: Mapping[str, Backend],
    settings: Settings,
    store: OutcomeStore,
) -> EnrichmentRunner:
    """The runner of this run's calls, on the decision's routes with the run's concurrency, its prices and budget,
    journaling every call into `store` as it goes (run_calls closes the journal).

    Raises dagster.Failure, before any call, when `max_cost_usd` is set and a remote route of the run has no
    price (the budget could not be kept), or when the database would reject every row of the run (the store's
    preflight names the value and the fix).
    """
    # The routes build_router makes of the decision, priced (and the budget refused) before any pool is touched.
    routes = [(decision.backend, decision.model)]
    if decision.fallback:
        routes.append((decision.fallback, decision.fallback_model))
    price_by_route, remote_price = run_prices(routes, settings, context.log.warning)
    if config.max_cost_usd is not None:
        unpriced = [m or "?" for n, m in routes if n not in LOCAL_ROUTES and price_by_route[n] is None]
        if unpriced:
            raise Failure(
                description=f"max_cost_usd={config.max_cost_usd} cannot be kept: no price for the remote model "
                f"{unpriced[0]!r}; {_set_price_hint(unpriced[0])}, or run without max_cost_usd"
            )
    concurrency = {LM_STUDIO: config.lm_studio_concurrency, REMOTE: config.remote_concurrency, ENGINE: None}
    router = build_router(decision, dict(backends), settings, concurrency, config.circuit_cooldown_seconds)
    info = RunInfo(
        project_id=settings.gemantria_project_id,
        run_id=context.run_id,
        asset_key=NOUN_ENRICHMENTS,
        routed_backend=decision.backend,
        prompt_version=config.prompt_version,
        params_hash=plan.params_hash,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        response_format=response_format(),
        tool_by_route=tool_by_route(settings),
        price_by_route=price_by_route,
        remote_price=remote_price,
    )
    tools = info.tool_by_route
    try:
        store.preflight(
            settings.gemantria_project_id,
            {tools[name] for name, _ in routes},
            {"|".join((m or "", config.prompt_version, plan.params_hash, "H0000")) for _, m in routes},
        )
    except StoreRejects as exc:
        raise Failure(description=f"the control plane would reject this run's rows: {exc}") from None
    daily = daily_remote_budget(settings) if REMOTE in (decision.backend, decision.fallback) else None
    if daily is not None and daily.unknown_because:
        context.log.warning(f"REMOTE_LLM_DAILY_BUDGET_USD cannot be checked: {daily.unknown_because}")
    budget = Budget(config.max_cost_usd, config.max_total_tokens, daily.left_usd if daily is not None else None)
    header = JournalHeader(
        project_id=info.project_id,
        run_id=info.run_id,
        asset_key=info.asset_key,
        routed_backend=decision.backend,
        tool=tools[decision.backend],
        model=decision.model,
        prompt_version=config.prompt_version,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
    )
    return EnrichmentRunner(
        router,
        info,
        context.log.info,
        config.progress_interval_seconds,
        config.ramp_up_seconds,
        budget,
        journal=store.journal(header),
    )


def close_journal(runner: EnrichmentRunner, log_warning: Callable[[str], None]) -> str:
    """Close the run's journal (its last group commit; what the store cannot take goes to the spool); mark the
    batch durable when everything is; return where the rows went (safe to print)."""
    if runner.journal is None:
        return "nowhere (no journal)"
    report = runner.journal.close()
    runner.batch.durable = report.durable
    runner.batch.stored = {
        "records_written": report.records_written,
        "outcomes_written": report.outcomes_written,
        "records_spooled": report.records_spooled,
        "outcomes_spooled": report.outcomes_spooled,
        "spool_reason": report.spool_reason,
        "seconds": report.commit_seconds,
        "journal_append_seconds": report.append_seconds,
        "commits": report.commits,
        "unknown_outcomes": report.unknown_outcomes,
    }
    if report.errors:
        log_warning(f"the run's journal could not be emptied: {'; '.join(report.errors)}; the next run replays it")
        return str(runner.journal.path)
    if report.spooled_to:
        return f"the spool {report.spooled_to} ({report.spool_reason})"
    return runner.journal.where


def run_calls(
    runner: EnrichmentRunner,
    todo: list[dict[str, Any]],
    backends: Iterable[Backend],
    log_warning: Callable[[str], None],
) -> EnrichmentBatch:
    """Make the calls (each durable as it arrives, through the runner's journal), then close the journal. On an
    outage of every backend or when the run's budget is spent, raise dagster.Failure naming where the calls
    made went. A re-run reuses the stored outcomes: it calls only for the nouns left."""

    async def go() -> None:
        # Returns nothing: asyncio.run would build a repr of a large result on some signal set-ups.
        try:
            await runner.run(todo)
        finally:
            await asyncio.gather(*(b.aclose() for b in backends))

    try:
        asyncio.run(go())
    except (AllBackendsDown, BudgetExhausted) as exc:
        where = close_journal(runner, log_warning)
        stop = "the outage" if isinstance(exc, AllBackendsDown) else "the run stopped"
        raise Failure(
            description=f"{exc} ({len(runner.batch.records)} calls and {len(runner.batch.enrichments)} outcomes "
            f"made before {stop} were saved to {where})",
            metadata=run_stats(runner.batch, failed_nouns=len(runner.failed_nouns)),
        ) from None
    finally:
        if runner.journal is not None and not runner.batch.durable and runner.batch.stored is None:
            close_journal(runner, log_warning)  # any other way out: what arrived is stored, the rest recovered
    return runner.batch


def build_result(
    batch: EnrichmentBatch,
    plan: WorkPlan,
    runner: EnrichmentRunner,
    config: EnrichmentConfig,
    decision: RoutingDecision,
    log_error: Callable[[str], None],
) -> MaterializeResult:
    """The materialization: the batch for the IO manager, run statistics as metadata, the four checks.

    When the failure rate is over `config.max_failure_rate`, an ERROR says how many nouns failed, of
    what, and what to do; the blocking `failure_rate` check then fails the run."""
    failed_nouns = len(runner.failed_nouns)
    batch.partition = ",".join(plan.partitions)
    batch.reused = list(plan.cached.values())
    stats = run_stats(batch, failed_nouns=failed_nouns)
    verdicts = check_verdicts(
        batch, nouns_in_scope=plan.nouns_in_scope, failed_nouns=failed_nouns, max_failure_rate=config.max_failure_rate
    )
    severity = {"coverage": AssetCheckSeverity.WARN}
    passed, meta = verdicts["failed_nouns"]
    if not passed:
        log_error(
            f"no answer for {failed_nouns} of {len(plan.todo)} nouns ({tally_text(runner.tally)}): "
            f"{meta['failed_rate']:.0%} > max_failure_rate {config.max_failure_rate:.0%}, so the run fails. Every "
            "call is recorded in control.agent_run; look up the error codes in docs/runbooks/TROUBLESHOOTING.md, "
            "fix the cause and run again (only the nouns without an outcome are called again)."
        )
    capacity = capacity_report(runner.router, batch.records)
    return MaterializeResult(
        value=batch,
        metadata={
            # Per route: the calls-in-flight limit it settled at, and rate-limit waits and 429s (issue 17).
            "concurrency": MetadataValue.json(capacity),
            **{f"concurrency_limit_{name}": MetadataValue.int(c["settled"]) for name, c in capacity.items()},
            "rate_limit_waits": MetadataValue.int(sum(c["rate_limit_waits"] for c in capacity.values())),
            "http_429": MetadataValue.int(sum(c["http_429"] for c in capacity.values())),
            **{k: v for k, v in stats.items() if v is not None and k not in _TYPED_STATS},
            "backend_mix": MetadataValue.json(stats["backend_mix"]),
            # Typed explicitly, and present on every materialization (0 when nothing was spent), so that the
            # UI plots them across materializations.
            "cost_usd": MetadataValue.float(stats["cost_usd"]),
            "saved_usd": MetadataValue.float(stats["saved_usd"]),
            "unpriced_calls": MetadataValue.int(stats["unpriced_calls"]),
            "total_tokens": MetadataValue.int(stats["total_tokens"]),
            "routed_backend": decision.backend,
            "routing_reasons": MetadataValue.json(decision.reasons),
            META_MODEL: decision.model or "",
            META_PROMPT_VERSION: config.prompt_version,
            "nouns_in_scope": plan.nouns_in_scope,
            "letters": ", ".join(f"{p} ({k})" for k, p in LETTER_NAMES.items() if p in plan.partitions),
        },
        check_results=[
            AssetCheckResult(
                check_name=name, passed=passed, metadata=meta, severity=severity.get(name, AssetCheckSeverity.ERROR)
            )
            for name, (passed, meta) in verdicts.items()
        ],
    )
