"""Profile the enrichment hot path without Dagster: EnrichmentRunner over a FailoverRouter over
RemoteLLMResource, against the fixed-latency server (started here, in its own process), then the
control-plane write of the batch if --dsn is given.

    python benchmarks/profile_runner.py --concurrency 64 --calls 3000 [--layer runner|resource|httpx]
        [--profile cprofile|pyinstrument|none] [--gc on|off] [--loop asyncio|uvloop]

Prints calls/s and the client CPU per call of the chosen layer (and of the write), and the top
of the profile. Comparing the layers splits the CPU per call between the HTTP stack (httpx over
httpx-aiohttp), the resource's bookkeeping and the runner's (records, validation). For on-CPU
profiles, `py-spy record --format raw -- python benchmarks/profile_runner.py ...` works too.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from throughput import free_port, http_json, load_nouns, stop_group  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--profile", choices=("cprofile", "pyinstrument", "none"), default="none")
    p.add_argument("--dsn", default=None, help="also write the batch with ControlPlaneWriter to this DSN")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--ramp-up", type=float, default=0.2, help="seconds over which the first calls start (as the asset)")
    p.add_argument("--gc", choices=("on", "off"), default="on")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument(
        "--layer",
        choices=("runner", "resource", "httpx"),
        default="runner",
        help="runner: the EnrichmentRunner (records, parse); resource: RemoteLLMResource.acomplete in C "
        "workers (no runner); httpx: bare httpx + httpx-aiohttp posts of the same payloads",
    )
    args = p.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.servers.fixed_latency",
            "--port",
            str(port),
            "--latency-ms",
            str(args.latency_ms),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            try:
                http_json(f"http://127.0.0.1:{port}/stats", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        run(args, f"http://127.0.0.1:{port}/v1")
    finally:
        stop_group(server)


def run(args: argparse.Namespace, base_url: str) -> None:
    from gemantria_dag.enrichment.prompt import PROMPT_VERSION, params_hash, response_format
    from gemantria_dag.enrichment.runner import EnrichmentRunner, RunInfo
    from gemantria_dag.routing.circuit_breaker import CircuitBreaker
    from gemantria_dag.routing.failover import FailoverRouter, Route
    from resources.llm.remote import RemoteLLMResource

    nouns = load_nouns()[: args.calls]
    c = args.concurrency
    remote = RemoteLLMResource(base_url=base_url, model="remote-model", max_connections=c)
    router = FailoverRouter(Route("remote", remote, "remote-model", c, CircuitBreaker(3, 30.0)), None)
    info = RunInfo(
        project_id=1,
        run_id="00000000-0000-0000-0000-000000000001",
        asset_key="noun_enrichments",
        routed_backend="remote",
        prompt_version=PROMPT_VERSION,
        params_hash=params_hash(temperature=0.2, max_tokens=256),
        temperature=0.2,
        max_tokens=256,
        response_format=response_format(),
        tool_by_route={"remote": "remote_llm", "lm_studio": "lm_studio"},
    )
    runner = EnrichmentRunner(router, info, lambda line: None, 5.0, args.ramp_up)

    async def go():
        try:
            if args.layer == "runner":
                return await runner.run(nouns)
            from gemantria_dag.enrichment.prompt import build_messages

            it = iter(nouns)
            done = []
            if args.layer == "resource":

                async def worker():
                    for n in it:
                        done.append(
                            await remote.acomplete(
                                messages=build_messages(n),
                                model="remote-model",
                                temperature=0.2,
                                max_tokens=256,
                                response_format=info.response_format,
                            )
                        )
            else:
                import httpx
                from httpx_aiohttp import AiohttpTransport

                limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
                client = httpx.AsyncClient(
                    transport=AiohttpTransport(limits=limits),
                    limits=limits,
                    headers={"Authorization": "Bearer x"},
                    timeout=httpx.Timeout(60, pool=None),
                )
                url = base_url + "/chat/completions"

                async def worker():
                    for n in it:
                        r = await client.post(
                            url,
                            json={
                                "model": "remote-model",
                                "messages": build_messages(n),
                                "temperature": 0.2,
                                "max_tokens": 256,
                                "response_format": info.response_format,
                            },
                        )
                        done.append(r.json())

            try:
                await asyncio.gather(*(worker() for _ in range(c)))
            finally:
                if args.layer == "httpx":
                    await client.aclose()
            return SimpleNamespace(records=done)  # only the count is read
        finally:
            await remote.aclose()

    if args.gc == "off":
        import gc

        gc.disable()
    prof = None
    if args.profile == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
    elif args.profile == "pyinstrument":
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0005)
        prof.start()

    async def go_none():  # return nothing: asyncio.run would repr its result (the whole batch) on exit
        out = await go()
        holder.append(out)

    holder: list = []
    t0, c0 = time.perf_counter(), time.process_time()
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(go_none())
    else:
        asyncio.run(go_none())
    batch = holder[0]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.profile == "cprofile":
        prof.disable()
    elif args.profile == "pyinstrument":
        prof.stop()
    calls = len(batch.records)
    print(
        f"{args.layer}: {calls} calls in {wall:.2f} s = {calls / wall:.1f} calls/s "
        f"(ideal {c / args.latency_ms * 1000:.0f}); "
        f"CPU {1000 * cpu / calls:.3f} ms/call"
    )
    if args.dsn:
        from pydantic import SecretStr

        from gemantria_dag.control_plane.writer import ControlPlaneWriter
        from gemantria_dag.db.target import DatabaseTarget

        target = DatabaseTarget(
            configured="dsn", on=True, reason="bench", display="bench", conninfo=SecretStr(args.dsn)
        )
        writer = ControlPlaneWriter(target, None)
        writer.connect().close()
        t0, c0 = time.perf_counter(), time.process_time()
        report = writer.write(batch)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"write: {report.records_written} records in {wall:.3f} s = {report.records_written / wall:.0f} rows/s; "
            f"CPU {1000 * cpu / calls:.3f} ms/call"
        )
    if args.profile == "cprofile":
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())
    elif args.profile == "pyinstrument":
        print(prof.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
