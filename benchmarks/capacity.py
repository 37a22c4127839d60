"""Does the adaptive limit find each backend's capacity (issue 17)? Figures and ratios, one run per scenario.

    python benchmarks/capacity.py hidden [--slots 1 2 4 8] [--nouns 500] [--service-ms 200] [--json]
    python benchmarks/capacity.py rate-limited [--rpm 1200 --tpm 120000 --burst-s 5] [--nouns 0] [--json]
    python benchmarks/capacity.py llama [--nouns 48] [--max-tokens 64] [--parallel 4] [--json]

Every pipeline phase is the run's call path without Dagster: `EnrichmentRunner` (prompt, parse, records) on a
router built as a run builds it (`plan.route_limiter`: no `remote_concurrency` = adaptive, starting at 4, up to
REMOTE_LLM_MAX_CONCURRENCY), through the remote resource (aiohttp, the pacer). Side by side in the same run:

- hidden: `tests.servers.hidden_capacity` with N slots at a fixed service time; per N, the pipeline at fixed
  concurrencies N and 2N (the best of them is the yardstick) and with no setting. Goal: >= 0.95 of the best
  fixed rate, median latency of the second half of the calls within 1.25x of the service time.
- rate-limited: `tests.servers.rate_limited` (1,200 requests and 120,000 tokens a minute, 5 s of burst), every
  noun (`--nouns 0`) with no setting. Allowed = what the buckets let through over the run (their refill over the
  wall time, plus the burst). Goal: >= 0.95 of allowed, 429s on < 1 % of calls after the first 10 s.
- llama: llama.cpp's `llama-server --parallel 4` with SmolLM2 (the test engine); a direct aiohttp client at
  1, 2, 4, 8 in flight (the best is the server's capacity) and the pipeline with no setting. Goal: >= 0.95.

The machine is shared (2 cores): run a scenario alone, and read the figures as one run's, not a law.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.throughput import free_port, load_nouns, stop_group  # noqa: E402

MODEL = "remote-model"


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def start(args: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(ready_url, timeout=1) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    stop_group(proc)
    raise SystemExit(f"{args[0]} did not start: see {log}")


def pipeline(
    base_url: str, nouns: list[dict[str, Any]], explicit: int | None, max_tokens: int, model: str = MODEL
) -> dict[str, Any]:
    """The run's call path over `nouns` (no Dagster, no database): rate, CPU per call, latencies, limits."""
    from gemantria_dag.enrichment.plan import route_limiter
    from gemantria_dag.enrichment.prompt import PROMPT_VERSION, params_hash, response_format
    from gemantria_dag.enrichment.runner import EnrichmentRunner, RunInfo
    from gemantria_dag.names import REMOTE
    from gemantria_dag.routing.circuit_breaker import CircuitBreaker
    from gemantria_dag.routing.failover import FailoverRouter, Route
    from gemantria_dag.settings import get_settings
    from resources.llm.remote import RemoteLLMResource

    backend = RemoteLLMResource(base_url=base_url, model=model, max_connections=64, timeout_seconds=300)
    limiter = route_limiter(REMOTE, backend, get_settings(), explicit)
    backend.ensure_pool_size(limiter.ceiling)
    route = Route(REMOTE, backend, model, limiter.ceiling, CircuitBreaker(100, 30.0), limiter=limiter)
    info = RunInfo(
        project_id=1,
        run_id="00000000-0000-0000-0000-000000000017",
        asset_key="noun_enrichments",
        routed_backend=REMOTE,
        prompt_version=PROMPT_VERSION,
        params_hash=params_hash(temperature=0.2, max_tokens=max_tokens),
        temperature=0.2,
        max_tokens=max_tokens,
        response_format=response_format(),
        tool_by_route={REMOTE: "remote_llm"},
    )
    lines: list[str] = []
    runner = EnrichmentRunner(FailoverRouter(route, None), info, lines.append, 3600.0, 0.2)

    async def go() -> None:
        try:
            await runner.run(nouns)
        finally:
            await backend.aclose()

    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    records = runner.batch.records
    calls = len(records)
    second_half = [r.result.latency_ms for r in records[calls // 2 :] if r.result.ok and r.result.latency_ms]
    report = limiter.report()
    return {
        "setting": explicit,
        "calls": calls,
        "failed_calls": sum(not r.result.ok for r in records),
        "wall_s": round(wall, 2),
        "calls_per_s": round(calls / wall, 2) if wall else None,
        "cpu_ms_per_call": round(1000 * cpu / calls, 3) if calls else None,
        "median_latency_ms_second_half": round(statistics.median(second_half), 1) if second_half else None,
        "limit_settled": report.settled,
        "limit_range": [report.low, report.high],
        "rate_limit_waits": sum(1 for r in records if r.result.rate_limit_wait_ms),
        "http_429": sum(r.result.rate_limited or 0 for r in records),
        "run_log": [line for line in lines if "calls in flight" in line],
        "pacer_waited_calls": backend.pacer.stats.waited_calls,
    }


def hidden(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "tests.servers.hidden_capacity", "--port", str(port)]
    proc = start([*server, "--service-ms", str(a.service_ms)], f"{root}/stats", work / "hidden.log")
    nouns = load_nouns()[: a.nouns]
    out: dict[str, Any] = {"service_ms": a.service_ms, "nouns": len(nouns), "by_slots": {}}
    try:
        for n in a.slots:
            row: dict[str, Any] = {}
            for setting in (n, 2 * n, None):
                http_json(f"{root}/admin/capacity", {"slots": n, "service_ms": a.service_ms})
                key = "adaptive" if setting is None else f"fixed_{setting}"
                row[key] = pipeline(f"{root}/v1", nouns, setting, a.max_tokens)
                print(f"[capacity] N={n} {key}: {row[key]['calls_per_s']} calls/s", file=sys.stderr)
            best = max(v["calls_per_s"] for k, v in row.items() if k.startswith("fixed"))
            adaptive = row["adaptive"]
            row["ratio_to_best_fixed"] = round(adaptive["calls_per_s"] / best, 3)
            median = adaptive["median_latency_ms_second_half"]
            row["median_latency_over_service"] = round(median / a.service_ms, 3) if median else None
            out["by_slots"][str(n)] = row
    finally:
        stop_group(proc)
    return out


def rate_limited(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "tests.servers.rate_limited", "--port", str(port), "--rpm", str(a.rpm)]
    args += ["--tpm", str(a.tpm), "--burst-s", str(a.burst_s), "--latency-ms", str(a.service_ms)]
    proc = start(args, f"{root}/stats", work / "rate_limited.log")
    nouns = load_nouns()
    nouns = nouns[: a.nouns] if a.nouns else nouns
    try:
        run = pipeline(f"{root}/v1", nouns, None, a.max_tokens)
        stats = http_json(f"{root}/stats")
    finally:
        stop_group(proc)
    answered = stats["chat"]
    tokens_per_call = stats["tokens_charged"] / answered if answered else 0.0
    # What the buckets let through over the run: their refill over the wall time plus the burst they start with.
    per_s = min(a.rpm / 60.0, a.tpm / 60.0 / tokens_per_call) if tokens_per_call else a.rpm / 60.0
    allowed = per_s * run["wall_s"] + min(a.rpm / 60.0, per_s) * a.burst_s
    late = [(ok, refused) for second, ok, refused in stats["per_second"] if second >= 10]
    late_calls = sum(ok + refused for ok, refused in late)
    late_429 = sum(refused for _, refused in late)
    return {
        "rpm": a.rpm,
        "tpm": a.tpm,
        "burst_s": a.burst_s,
        "nouns": len(nouns),
        "max_tokens": a.max_tokens,
        "tokens_per_call_charged": round(tokens_per_call, 1),
        "allowed_calls_per_s": round(per_s, 2),
        "pipeline": run,
        "answered": answered,
        "ratio_to_allowed": round(answered / allowed, 3) if allowed else None,
        "http_429": stats["rate_limited"],
        "http_429_share_after_10s": round(late_429 / late_calls, 4) if late_calls else None,
    }


async def _direct(url: str, bodies: list[dict[str, Any]], c: int) -> tuple[int, float, float]:
    import aiohttp

    it = iter(bodies)
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

        async def worker() -> None:
            nonlocal ok
            for body in it:
                async with session.post(url, json=body) as response:
                    await response.read()
                    ok += response.status == 200

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(c)))
        return ok, time.perf_counter() - t0, time.process_time() - c0


def llama(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from benchmarks.throughput import request_bodies
    from gemantria_dag.engine.files import find_binary, find_model
    from gemantria_dag.settings import get_settings

    settings = get_settings()
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    args = [str(find_binary(settings)), "-m", str(find_model(settings)), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-c", str(1024 * a.parallel), "--parallel", str(a.parallel), "-t", "1", "--no-ui", "-a", "smollm2"]
    proc = start(args, f"{root}/health", work / "llama.log")
    nouns = load_nouns()[: a.nouns]
    out: dict[str, Any] = {"parallel": a.parallel, "nouns": len(nouns), "max_tokens": a.max_tokens, "direct": {}}
    try:
        bodies = request_bodies(nouns, "smollm2", "json_schema", a.max_tokens, 0.2)
        for c in (1, 2, 4, 8):
            ok, wall, cpu = asyncio.run(_direct(f"{root}/v1/chat/completions", bodies, c))
            out["direct"][str(c)] = {"calls_per_s": round(len(bodies) / wall, 3), "ok": ok}
            print(f"[capacity] llama direct C={c}: {out['direct'][str(c)]}", file=sys.stderr)
        out["pipeline_fixed_4"] = pipeline(f"{root}/v1", nouns, 4, a.max_tokens, "smollm2")
        out["pipeline_adaptive"] = pipeline(f"{root}/v1", nouns, None, a.max_tokens, "smollm2")
    finally:
        stop_group(proc)
    best = max(v["calls_per_s"] for v in out["direct"].values())
    out["best_direct_calls_per_s"] = best
    out["ratio_adaptive_to_best_direct"] = round(out["pipeline_adaptive"]["calls_per_s"] / best, 3)
    out["ratio_fixed_4_to_best_direct"] = round(out["pipeline_fixed_4"]["calls_per_s"] / best, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=("hidden", "rate-limited", "llama"))
    p.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--nouns", type=int, default=None, help="hidden 500, llama 48, rate-limited 0 (every noun)")
    p.add_argument("--service-ms", type=float, default=200.0)
    p.add_argument("--max-tokens", type=int, default=None, help="default 256 (the run's), llama 64")
    p.add_argument("--rpm", type=float, default=1200.0)
    p.add_argument("--tpm", type=float, default=120000.0)
    p.add_argument("--burst-s", type=float, default=5.0)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.nouns is None:
        a.nouns = {"hidden": 500, "llama": 48, "rate-limited": 0}[a.scenario]
    if a.max_tokens is None:
        a.max_tokens = 64 if a.scenario == "llama" else 256
    work = Path(tempfile.mkdtemp(prefix="capacity-"))
    run = {"hidden": hidden, "rate-limited": rate_limited, "llama": llama}[a.scenario]
    result = {"scenario": a.scenario, **run(a, work)}
    print(json.dumps(result, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
