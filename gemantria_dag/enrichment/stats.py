"""Materialization metadata and asset-check verdicts of one enrichment run."""

from __future__ import annotations

from collections import Counter
from statistics import quantiles
from typing import Any

from gemantria_dag.control_plane.records import EnrichmentBatch


def percentile(values: list[float], q: int) -> float | None:
    """The `q`th percentile (1-99) of `values` (`statistics.quantiles`, inclusive method); None without values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[q - 1]


def run_stats(batch: EnrichmentBatch, *, failed_nouns: int) -> dict[str, Any]:
    """The run's materialization metadata: call counts (failed, repairs, fallbacks, substitutions), nouns
    by outcome, call latency p50/p95 in milliseconds (None without calls), token sums, spend and savings
    in USD, calls per route."""
    records = batch.records
    latencies = [r.result.latency_ms for r in records if r.result.latency_ms is not None]
    return {
        "calls_made": len(records),
        "calls_failed": sum(not r.result.ok for r in records),
        "cache_hits": len(batch.reused),
        "reused_ok": sum(e.ok for e in batch.reused),
        "nouns_enriched": sum(e.ok for e in batch.enrichments),
        "violations": sum(not e.ok for e in batch.enrichments),
        "nouns_failed": failed_nouns,
        "repairs": sum(r.args.purpose == "repair" for r in records),
        "fallbacks": sum(r.args.fallback for r in records),
        "substitutions": sum(r.result.substituted_model is not None for r in records),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "prompt_tokens": sum(r.result.prompt_tokens or 0 for r in records),
        "completion_tokens": sum(r.result.completion_tokens or 0 for r in records),
        "backend_mix": dict(Counter(r.args.backend for r in records)),
        # USD: what the calls cost (priced calls only), what the local ones saved, and the calls left unpriced.
        # Started at 0.0: a run with no call must still give floats (MetadataValue.float refuses an int 0).
        "cost_usd": sum((r.result.cost_usd or 0.0 for r in records), 0.0),
        "saved_usd": sum((r.result.saved_usd or 0.0 for r in records), 0.0),
        "unpriced_calls": sum(r.result.cost_usd is None for r in records),
        "total_tokens": sum((r.result.prompt_tokens or 0) + (r.result.completion_tokens or 0) for r in records),
    }


def check_verdicts(
    batch: EnrichmentBatch, *, nouns_in_scope: int, failed_nouns: int, max_failure_rate: float
) -> dict[str, tuple[bool, dict[str, Any]]]:
    """(passed, metadata) of each of the asset's checks (`steps.CHECKS`), by name.

    Failure rates are fractions of the nouns with an outcome plus `failed_nouns`; coverage is the fraction
    of `nouns_in_scope` with an outcome (reused ones included).
    """
    outcomes = batch.all_enrichments
    ok = [e for e in outcomes if e.ok and e.insight is not None]
    attempted = len(outcomes) + failed_nouns
    failures = sum(not e.ok for e in outcomes) + failed_nouns
    failure_rate = failures / attempted if attempted else 0.0
    bad_confidence = [e.strong_id for e in ok if not 0.0 <= e.insight.confidence <= 1.0]  # type: ignore[union-attr]
    empty = [e.strong_id for e in ok if not e.insight.insight.strip()]  # type: ignore[union-attr]
    coverage = len(outcomes) / nouns_in_scope if nouns_in_scope else 1.0
    return {
        "coverage": (coverage >= 1.0, {"coverage": coverage, "with_outcome": len(outcomes), "nouns": nouns_in_scope}),
        "failure_rate": (
            failure_rate <= max_failure_rate,
            {"failure_rate": failure_rate, "failures": failures, "threshold": max_failure_rate},
        ),
        "confidence_in_range": (
            not bad_confidence,
            {"out_of_range": len(bad_confidence), "examples": ", ".join(bad_confidence[:10])},
        ),
        "no_empty_insight": (not empty, {"empty": len(empty), "examples": ", ".join(empty[:10])}),
        # Nouns the run got no answer for (every backend's calls failed): over the threshold, the run failed.
        "failed_nouns": (
            (failed_nouns / attempted if attempted else 0.0) <= max_failure_rate,
            {
                "failed_nouns": failed_nouns,
                "failed_rate": failed_nouns / attempted if attempted else 0.0,
                "threshold": max_failure_rate,
            },
        ),
    }
