"""CPU cost of pricing a call (issue 18), without servers: what `_record` spends on cost_usd / saved_usd.

    python benchmarks/pricing.py [--calls 100000] [--repeat 5]

Times, in process CPU, N calls of: the per-call pricing (`runner._price`) of a remote and of a local
call, the whole `_record` with the run's prices and with none (then `_price` returns at once), a budget's
hold and settle around one call (`max_cost_usd` set), a cached `price_for` lookup, and the first (cold)
lookup, which imports genai-prices and loads its table once per process. Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def _best_us(fn: Callable[[], object], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, time.process_time() - start)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from gemantria_dag.cost.budget import Budget
    from gemantria_dag.cost.prices import catalogue_price, price_for
    from gemantria_dag.enrichment.prompt import PROMPT_VERSION, response_format
    from gemantria_dag.enrichment.runner import RunInfo, _price, _record
    from gemantria_dag.llm.results import CompletionMetadata, CompletionResult
    from gemantria_dag.routing.circuit_breaker import CircuitBreaker
    from gemantria_dag.routing.failover import Attempt, Route
    from gemantria_dag.settings import load_settings

    settings = load_settings(gematria_dsn="off")
    start = time.process_time()
    gpt = price_for("gpt-4o-mini", "openai", settings)
    cold_ms = (time.process_time() - start) * 1e3
    base = dict(
        project_id=1,
        run_id="00000000-0000-0000-0000-000000000001",
        asset_key="noun_enrichments",
        routed_backend="remote",
        prompt_version=PROMPT_VERSION,
        params_hash="0" * 16,
        temperature=0.2,
        max_tokens=256,
        response_format=response_format(),
        tool_by_route={"remote": "remote_llm", "lm_studio": "lm_studio", "engine": "embedded_engine"},
    )
    priced = RunInfo(**base, price_by_route={"remote": gpt}, remote_price=gpt)
    unpriced = RunInfo(**base)
    result = CompletionResult(
        ok=True,
        response='{"insight": "x", "themes": [], "confidence": 0.5}',
        metadata=CompletionMetadata(backend="remote", model="gpt-4o-mini", prompt_tokens=140, completion_tokens=60),
    )
    remote = Attempt(Route("remote", None, "gpt-4o-mini", 16, CircuitBreaker(3, 30.0)), result, False)  # type: ignore[arg-type]
    noun = {"strong_id": "H1", "partition": "alef"}

    n, r = args.calls, args.repeat

    def budget_us() -> float:
        budget = Budget(max_cost_usd=1e9)

        async def go() -> float:
            best = float("inf")
            for _ in range(r):
                start = time.process_time()
                for _ in range(n):
                    budget.settle(await budget.reserve(0.0003, 400), (result_record,))
                best = min(best, time.process_time() - start)
            return best / n * 1e6

        return asyncio.run(go())

    result_record = _record(priced, noun, remote, 400, "enrich", [], None).result
    figures = {
        "_price, remote call (us)": _best_us(lambda: _price(priced, "remote", result), n, r),
        "_price, local call with saved_usd (us)": _best_us(lambda: _price(priced, "lm_studio", result), n, r),
        "_record with prices (us)": _best_us(lambda: _record(priced, noun, remote, 400, "enrich", [], None), n, r),
        "_record, no price in the run (us)": _best_us(
            lambda: _record(unpriced, noun, remote, 400, "enrich", [], None), n, r
        ),
        "budget hold + settle (us)": budget_us(),
        "price_for, cached (us)": _best_us(lambda: price_for("gpt-4o-mini", "openai", settings), n, r),
        "price_for, first lookup in the process (ms)": cold_ms,
    }
    catalogue_price.cache_clear()
    for name, value in figures.items():
        print(f"{name:<46} {value:8.3f}")


if __name__ == "__main__":
    main()
