"""Client throughput of `noun_enrichments` against an OpenAI-compatible server (issues 6 and 10).

    python benchmarks/throughput.py --server fixed --latency-ms 200 --concurrency 64 [--json]
    python benchmarks/throughput.py --server http://127.0.0.1:8080/v1 --concurrency 4 [--json]

One run, one process tree. `--server fixed` starts `tests.servers.fixed_latency` in its own
process (so it never shares the client's GIL); a URL uses that server as it is. The script
also starts an embedded PostgreSQL in a short /tmp folder (the control plane) and stops it at
the end. Then, each in a fresh subprocess of this script (its own CPU time and peak RSS),
one after the other against the same server, with the same request bodies:

- ideal: C / latency (fixed server); for a URL, the best direct client's rate (the server's capacity);
- direct aiohttp, direct httpx (`httpx.AsyncClient`), direct httpx over the `httpx-aiohttp`
  transport (the stack the pipeline uses): C workers, calls/s, client CPU per call;
- LiteLLM's Router (the `bench` extra) as the peer gateway, `null` when litellm is absent;
- the pipeline: `noun_enrichments` materialized through Dagster (partition range alef...tav,
  BackfillPolicy.single_run, remote routing at remote_concurrency=C) with JSON validation and
  control-plane logging (COPY into control.agent_run) on the embedded Postgres. Its rate counts
  from the first request to the last record persisted; the run's start-up is reported apart.
  Then the same materialization again, which must make 0 calls;
- the sequential loop of the original enrichment script: one call at a time, each reply validated.

Without `--json` it prints a readable table (the issue-6 figures too); with `--json`, one JSON
object whose first keys are issue 10's contract. The figures are void when the direct aiohttp
client does not reach 0.9 x ideal on the fixed server (the server, or a busy machine, is the
bottleneck then): the run says so.

The project reads its settings only through `gemantria_dag.settings`, so the pipeline subprocess
gets its settings as environment variables, built on `settings.child_environment()`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests.servers` and the project, when run as a plain script
    sys.path.insert(0, str(REPO_ROOT))

CONTRACT_KEYS = (
    "concurrency",
    "latency_ms",
    "calls",
    "ideal_calls_per_s",
    "direct_aiohttp_calls_per_s",
    "direct_httpx_calls_per_s",
    "litellm_calls_per_s",
    "pipeline_calls_per_s",
    "pipeline_cpu_ms_per_call",
    "pipeline_peak_rss_mb",
    "logging_share_of_wall",
    "run_startup_s",
)
BENCH_API_KEY = "sk-bench-0000"
RSS_SMALL_NOUNS = 500
VOID_THRESHOLD = 0.9
ALL_PARTITIONS = ("alef", "tav")  # the partition range: every letter


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a child started with start_new_session=True, and everything it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (utime+stime, children reaped included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += sum(int(parts[i]) for i in (11, 12, 13, 14)) / tick
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total


# --------------------------------------------------------------------------- the request bodies


def load_nouns() -> list[dict[str, Any]]:
    """Every common noun with its gematria, shaped as `noun_enrichments` sees it (same order)."""
    import pandas as pd

    from assets.hebrew_nouns import NOUN_COLUMNS
    from assets.noun_gematria import compute_gematria
    from gemantria_dag.enrichment.partitions import LETTER_NAMES
    from gemantria_dag.settings import get_settings
    from resources.bible_db import BibleDatabase

    db = BibleDatabase(path=str(get_settings().bible_db_path))
    frame = compute_gematria(pd.DataFrame([n.model_dump() for n in db.common_nouns()], columns=NOUN_COLUMNS))
    nouns = frame.to_dict("records")
    for noun in nouns:
        noun["partition"] = LETTER_NAMES[noun["first_letter"]]
    return nouns


def request_bodies(
    nouns: list[dict[str, Any]], model: str, form: str, max_tokens: int, temperature: float
) -> list[dict[str, Any]]:
    """The chat bodies the pipeline sends (same prompt, same structured-output form)."""
    from gemantria_dag.enrichment.prompt import build_messages, insight_json_schema

    schema = insight_json_schema()
    if form == "json_object":
        rf: dict[str, Any] = {"type": "json_object", "schema": schema}
    else:
        rf = {"type": "json_schema", "json_schema": {"name": "noun_insight", "strict": True, "schema": schema}}
    return [
        {
            "model": model,
            "messages": build_messages(n),
            "temperature": temperature,
            "max_tokens": max_tokens,
            "response_format": rf,
        }
        for n in nouns
    ]


def pick_structured_form(
    base_url: str, nouns: list[dict[str, Any]], model: str, max_tokens: int, temperature: float
) -> tuple[str, float]:
    """(form, seconds one call took): json_schema (OpenAI, LM Studio, the fixed server) unless the
    server refuses that form (llama-cpp-python answers it with a 500 naming it), then json_object,
    as the backends do."""
    import httpx

    headers = {"Authorization": f"Bearer {BENCH_API_KEY}"}
    with httpx.Client(timeout=300.0, headers=headers) as client:
        for form in ("json_schema", "json_object"):
            body = request_bodies(nouns[:1], model, form, max_tokens, temperature)[0]
            started = time.perf_counter()
            resp = client.post(f"{base_url}/chat/completions", json=body)
            if resp.status_code < 400:
                return form, time.perf_counter() - started
            text = resp.text.lower()
            if not ("response_format" in text or "json_schema" in text or "json_object" in text):
                break
    raise SystemExit(f"the server refused a chat completion: HTTP {resp.status_code}: {resp.text[:300]}")


# --------------------------------------------------------------------------- phases (subprocesses)


def _reply_text(data: dict[str, Any]) -> str:
    return data["choices"][0]["message"]["content"]


async def _drive(bodies: list[dict[str, Any]], concurrency: int, call) -> tuple[int, int]:
    """Run `call(body)` over `bodies` with `concurrency` workers; (ok, failed)."""
    it = iter(bodies)
    counts = [0, 0]

    async def worker() -> None:
        for body in it:
            try:
                await call(body)
                counts[0] += 1
            except Exception:  # noqa: BLE001 - counted, and reported as failures
                counts[1] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1]


def _timed(run) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    ok, failed = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    calls = ok + failed
    return {
        "calls": calls,
        "failed": failed,
        "wall_s": wall,
        "calls_per_s": calls / wall if wall else None,
        "cpu_ms_per_call": 1000.0 * cpu / calls if calls else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_direct(spec: dict[str, Any]) -> dict[str, Any]:
    bodies, c, url = spec["bodies"], spec["concurrency"], spec["base_url"] + "/chat/completions"
    headers = {"Authorization": f"Bearer {BENCH_API_KEY}"}
    kind = spec["client"]

    if kind == "aiohttp":
        import aiohttp

        async def main() -> tuple[int, int]:
            connector = aiohttp.TCPConnector(limit=c, limit_per_host=c)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

                async def call(body: dict[str, Any]) -> None:
                    async with session.post(url, json=body) as resp:
                        resp.raise_for_status()
                        _reply_text(await resp.json())

                return await _drive(bodies, c, call)
    else:
        import httpx

        async def main() -> tuple[int, int]:
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            transport = None
            if kind == "httpx_aiohttp":
                from httpx_aiohttp import AiohttpTransport

                transport = AiohttpTransport(limits=limits)
            timeout = httpx.Timeout(300.0, pool=None)
            async with httpx.AsyncClient(
                headers=headers, limits=limits, timeout=timeout, transport=transport
            ) as client:

                async def call(body: dict[str, Any]) -> None:
                    resp = await client.post(url, json=body)
                    resp.raise_for_status()
                    _reply_text(resp.json())

                return await _drive(bodies, c, call)

    return _timed(lambda: asyncio.run(main()))


def phase_litellm(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        import litellm
        from litellm import Router
    except ImportError:
        return {"skipped": "litellm is not installed (pip install -e '.[bench]')"}
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    bodies, c = spec["bodies"], spec["concurrency"]
    router = Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": f"openai/{spec['model']}",
                    "api_base": spec["base_url"],
                    "api_key": BENCH_API_KEY,
                },
            }
        ],
        num_retries=0,
    )

    async def main() -> tuple[int, int]:
        async def call(body: dict[str, Any]) -> None:
            resp = await router.acompletion(
                model="bench",
                messages=body["messages"],
                temperature=body["temperature"],
                max_tokens=body["max_tokens"],
                response_format=body["response_format"],
            )
            assert resp.choices[0].message.content is not None

        return await _drive(bodies, c, call)

    return _timed(lambda: asyncio.run(main()))


def phase_sequential(spec: dict[str, Any]) -> dict[str, Any]:
    """The original enrichment script's loop: one blocking call at a time, each reply validated."""
    import httpx

    from gemantria_dag.enrichment.parse import parse_insight

    bodies, url = spec["bodies"], spec["base_url"] + "/chat/completions"
    valid = [0]

    client = httpx.Client(headers={"Authorization": f"Bearer {BENCH_API_KEY}"}, timeout=300.0)

    def run() -> tuple[int, int]:
        ok = failed = 0
        with client:
            for body in bodies:
                try:
                    resp = client.post(url, json=body)
                    resp.raise_for_status()
                    insight, _ = parse_insight(_reply_text(resp.json()))
                    valid[0] += insight is not None
                    ok += 1
                except Exception:  # noqa: BLE001
                    failed += 1
        return ok, failed

    out = _timed(run)
    out["valid_replies"] = valid[0]
    return out


def phase_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """`noun_enrichments` through Dagster (in-process executor), timed from its first request
    to the end of the IO manager's write, then once more (must make 0 calls)."""
    import gc

    import psycopg
    from dagster import instance_for_test, materialize
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from assets.hebrew_nouns import hebrew_nouns
    from assets.noun_enrichments import noun_enrichments
    from assets.noun_gematria import noun_gematria
    from gemantria_dag.enrichment.runner import EnrichmentRunner
    from gemantria_dag.settings import get_settings, reset_settings_cache
    from resources.build import build_resources
    from resources.io_managers.control_plane import ControlPlaneIOManager

    # Instrumentation only (nothing the pipeline does changes): timestamps and process CPU time at the
    # first request (the runner starts), the end of the calls, the IO manager's start and the last
    # record persisted (its write returns); peak RSS at each; garbage-collector pauses during the calls.
    marks: dict[str, tuple[float, float]] = {}
    rss_at: dict[str, float] = {}
    gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_objects: list[int] = []
    gc_started = [0.0]
    original_run, original_handle = EnrichmentRunner.run, ControlPlaneIOManager.handle_output

    async def timed_run(self, nouns):  # type: ignore[no-untyped-def]
        if "first_request" not in marks:
            gc_objects.append(len(gc.get_objects()))  # what a full collection walks
            marks["first_request"] = (time.perf_counter(), time.process_time())
        try:
            return await original_run(self, nouns)
        finally:
            marks["runner_done"] = (time.perf_counter(), time.process_time())
            rss_at["calls_done"] = peak_rss_mb()

    def timed_handle(self, context, obj):  # type: ignore[no-untyped-def]
        marks["handle_start"] = (time.perf_counter(), time.process_time())
        rss_at["io_manager_start"] = peak_rss_mb()
        original_handle(self, context, obj)
        rss_at["persisted"] = peak_rss_mb()
        marks["persisted"] = (time.perf_counter(), time.process_time())

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if "first_request" not in marks or "runner_done" in marks:
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses[info["generation"]].append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)
    EnrichmentRunner.run = timed_run  # type: ignore[method-assign]
    ControlPlaneIOManager.handle_output = timed_handle  # type: ignore[method-assign]

    if spec.get("no_gc_freeze"):
        # The "before" of the runner's GC change, for comparisons: no frozen heap during the calls.
        import contextlib

        import gemantria_dag.enrichment.runner as runner_module

        runner_module._short_gc_pauses = contextlib.nullcontext  # type: ignore[attr-defined]

    reset_settings_cache()
    settings = get_settings()
    resources = build_resources(settings)
    assets = [hebrew_nouns, noun_gematria, noun_enrichments]
    config: dict[str, Any] = {
        "backend": "remote",
        "remote_concurrency": spec["concurrency"],
        "max_tokens": spec["max_tokens"],
        "temperature": spec["temperature"],
    }
    if spec.get("limit"):
        config["limit"] = spec["limit"]
    if spec.get("ramp_up") is not None:
        config["ramp_up_seconds"] = spec["ramp_up"]
    run_config = {"ops": {"noun_enrichments": {"config": config}}}
    tags = {ASSET_PARTITION_RANGE_START_TAG: ALL_PARTITIONS[0], ASSET_PARTITION_RANGE_END_TAG: ALL_PARTITIONS[1]}
    out: dict[str, Any] = {}
    with instance_for_test(temp_dir=spec["instance_dir"]) as instance:
        t0 = time.perf_counter()
        lex = materialize([hebrew_nouns, noun_gematria], resources=resources, instance=instance)
        assert lex.success
        out["lexicon_setup_s"] = time.perf_counter() - t0

        server_before = _server_calls(spec)
        rss_before, cpu0 = peak_rss_mb(), time.process_time()
        t_start = time.perf_counter()
        result = materialize(
            assets,
            selection=[noun_enrichments],
            instance=instance,
            resources=resources,
            run_config=run_config,
            tags=tags,
        )
        t_end = time.perf_counter()
        assert result.success
        meta = _metadata(result)
        first, persisted = marks["first_request"], marks["persisted"]
        calls = int(meta["calls_made"])
        wall = persisted[0] - first[0]
        out.update(
            {
                "calls": calls,
                "nouns": int(meta["nouns_enriched"]) + int(meta["violations"]) + int(meta["nouns_failed"]),
                "nouns_enriched": int(meta["nouns_enriched"]),
                "violations": int(meta["violations"]),
                "nouns_failed": int(meta["nouns_failed"]),
                "repairs": int(meta["repairs"]),
                "calls_failed": int(meta["calls_failed"]),
                "wall_s": wall,
                "calls_per_s": calls / wall if wall > 0 else None,
                "cpu_ms_per_call": 1000.0 * (persisted[1] - first[1]) / calls if calls else None,
                # Where the wall goes: the calls (runner), the asset's tail and Dagster until the IO manager,
                # the IO manager (control-plane write); wall seconds and CPU seconds of each.
                "breakdown_s": {
                    "calls": marks["runner_done"][0] - first[0],
                    "asset_tail": marks["handle_start"][0] - marks["runner_done"][0],
                    "io_manager": persisted[0] - marks["handle_start"][0],
                },
                "breakdown_cpu_s": {
                    "calls": marks["runner_done"][1] - first[1],
                    "asset_tail": marks["handle_start"][1] - marks["runner_done"][1],
                    "io_manager": persisted[1] - marks["handle_start"][1],
                },
                "run_startup_s": first[0] - t_start,
                "run_startup_cpu_s": first[1] - cpu0,
                "run_after_persist_s": t_end - persisted[0],
                "run_total_s": t_end - t_start,
                "run_total_cpu_ms_per_call": 1000.0 * (time.process_time() - cpu0) / calls if calls else None,
                "control_plane_seconds": float(meta["control_plane_seconds"]),
                "journal_append_seconds": float(meta.get("control_plane_journal_append_seconds", 0.0)),
                "records_written": int(meta["control_plane_records_written"]),
                "outcomes_written": int(meta["control_plane_outcomes_written"]),
                "records_spooled": int(meta["control_plane_records_spooled"]),
                "latency_p50_ms": meta.get("latency_p50_ms"),
                "latency_p95_ms": meta.get("latency_p95_ms"),
                "peak_rss_mb": peak_rss_mb(),
                "peak_rss_before_run_mb": rss_before,
                "peak_rss_at_mb": {"before_run": rss_before, **rss_at, "run_end": peak_rss_mb()},
            }
        )
        out["gc_during_calls"] = {
            f"gen{g}": {
                "count": len(p),
                "total_ms": round(1000 * sum(p), 1),
                "max_ms": round(1000 * max(p, default=0.0), 1),
            }
            for g, p in gc_pauses.items()
        }
        out["gc_during_calls"]["objects_at_start"] = gc_objects[0] if gc_objects else None
        out["insert_rows_per_s"] = (
            out["records_written"] / out["control_plane_seconds"] if out["control_plane_seconds"] > 0 else None
        )
        out["logging_share_of_wall"] = out["control_plane_seconds"] / wall if wall > 0 else None
        # The journal (issue 15): appending each call's lines on the event loop, as a share of the calls' wall time.
        out["journal_share_of_wall"] = out["journal_append_seconds"] / wall if wall > 0 else None
        server_after = _server_calls(spec)
        out["server_calls"] = None if server_before is None else server_after - server_before
        with psycopg.connect(settings.gematria_dsn.get_secret_value()) as conn:  # type: ignore[union-attr]
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT id) FROM control.agent_run WHERE session_id = %s", (result.run_id,)
            ).fetchone()
        out["agent_run_rows"] = int(rows)
        out["recorded_once"] = bool(
            rows == distinct == calls == out["records_written"] and out["server_calls"] in (None, calls)
        )

        if spec.get("rematerialize"):
            before = _server_calls(spec)
            t0 = time.perf_counter()
            again = materialize(
                assets,
                selection=[noun_enrichments],
                instance=instance,
                resources=resources,
                run_config=run_config,
                tags=tags,
            )
            assert again.success
            meta2 = _metadata(again)
            after = _server_calls(spec)
            out["rematerialize_calls"] = int(meta2["calls_made"])
            out["rematerialize_cache_hits"] = int(meta2["cache_hits"])
            out["rematerialize_server_calls"] = None if before is None else after - before
            out["rematerialize_s"] = time.perf_counter() - t0
    return out


def _metadata(result: Any) -> dict[str, Any]:
    event = result.asset_materializations_for_node("noun_enrichments")[0]
    return {k: v.value for k, v in event.metadata.items()}


def _server_calls(spec: dict[str, Any]) -> int | None:
    if not spec.get("stats_url"):
        return None
    return int(http_json(spec["stats_url"])["chat"])


PHASES = {"direct": phase_direct, "litellm": phase_litellm, "sequential": phase_sequential, "pipeline": phase_pipeline}


def run_phase_main(name: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    if "bodies_file" in spec:
        spec["bodies"] = json.loads(Path(spec["bodies_file"]).read_text())[: spec["calls"]]
    result = PHASES[name](spec)
    sys.stdout.write("\n@@RESULT@@ " + json.dumps(result) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the orchestrator


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="gmbench-", dir="/tmp"))  # short: the PG socket lives here
        self.server: subprocess.Popen | None = None
        self.server_pid: int | None = None
        self.pgdata = self.work / "pg"
        self.pg_uri: str | None = None
        self.db_counter = 0
        self.notes: list[str] = []
        self.log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # ---- lifecycle
    def start_fixed_server(self) -> str:
        port = free_port()
        log = (self.work / "fixed_latency.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "tests.servers.fixed_latency",
            "--port",
            str(port),
            "--latency-ms",
            str(self.args.latency_ms),
            "--model",
            self.args.model or "remote-model",
        ]
        self.server = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.server_pid = self.server.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SystemExit(f"the fixed-latency server exited: {(self.work / 'fixed_latency.log').read_text()}")
            try:
                http_json(f"http://127.0.0.1:{port}/stats", timeout=1)
                return f"http://127.0.0.1:{port}/v1"
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise SystemExit("the fixed-latency server did not start within 30 s")

    def start_postgres(self) -> None:
        from gemantria_dag.db.embedded import start_embedded_postgres

        self.pg_uri = start_embedded_postgres(self.pgdata)

    def new_database(self) -> str:
        import psycopg

        assert self.pg_uri is not None
        self.db_counter += 1
        name = f"bench_{self.db_counter}"
        with psycopg.connect(self.pg_uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.pg_uri.replace("/postgres?", f"/{name}?", 1)

    def cleanup(self) -> None:
        if self.server is not None:
            stop_group(self.server)
        if self.pg_uri is not None:
            from gemantria_dag.db.embedded import stop_embedded_postgres

            try:
                stop_embedded_postgres(self.pgdata)
            except Exception as exc:  # noqa: BLE001 - report, keep cleaning
                print(f"warning: could not stop the embedded PostgreSQL in {self.pgdata}: {exc}", file=sys.stderr)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- one phase in a fresh process
    def phase(self, name: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        spec_file = self.work / f"spec-{name}-{time.monotonic_ns()}.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--spec", str(spec_file)]
        if name == "pipeline" and self.args.profile_pipeline and not spec.get("limit_for_rss"):
            # py-spy's collapsed stacks of the pipeline process (on-CPU samples only).
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            cmd = [
                spy,
                "record",
                "--format",
                "raw",
                "--threads",
                "-r",
                "250",
                "-o",
                self.args.profile_pipeline,
                "--",
                *cmd,
            ]
        self._child_cpu_s()  # start counting children's CPU from here
        busy0, total0 = cpu_jiffies()
        ours = [p for p in (self.server_pid, self.postmaster_pid()) if p]
        server_cpu0 = tree_cpu_s(ours)
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env or self.base_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=self.args.phase_timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise SystemExit(f"phase {name} took longer than {self.args.phase_timeout} s") from None
        if proc.returncode != 0 or "@@RESULT@@" not in out:
            tail = (err or "")[-4000:]
            raise SystemExit(f"phase {name} failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(out.rsplit("@@RESULT@@", 1)[1].strip().splitlines()[0])
        busy1, total1 = cpu_jiffies()
        tick = os.sysconf("SC_CLK_TCK")
        # The machine's CPU use during the phase, beside ours: other work on a 2-core machine skews figures.
        machine_busy_s = (busy1 - busy0) / tick
        phase_cpu = self._child_cpu_s()
        server_cpu = tree_cpu_s(ours) - server_cpu0  # the LLM server and PostgreSQL (with its reaped backends)
        wall_s = (total1 - total0) / tick / (os.cpu_count() or 1)
        result["other_load_cores"] = max(0.0, (machine_busy_s - phase_cpu - server_cpu) / wall_s) if wall_s else None
        result["server_cpu_cores"] = server_cpu / wall_s if wall_s else None
        return result

    _last_children_cpu = 0.0

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _child_cpu_s(self) -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        now = ru.ru_utime + ru.ru_stime
        used, self._last_children_cpu = now - self._last_children_cpu, now
        return used

    def base_env(self) -> dict[str, str]:
        from gemantria_dag.settings import child_environment

        env = child_environment(without=("REMOTE_LLM_", "LM_STUDIO_", "GEMATRIA_", "GEMANTRIA_", "DAGSTER_HOME"))
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm: no network fetch of its price list
        return env

    def pipeline_env(self, base_url: str, model: str) -> dict[str, str]:
        env = self.base_env()
        state = Path(tempfile.mkdtemp(prefix="state-", dir=self.work))
        env.update(
            {
                "GEMANTRIA_STATE_DIR": str(state),
                "GEMATRIA_DSN": self.new_database(),
                "REMOTE_LLM_BASE_URL": base_url,
                "REMOTE_LLM_MODEL": model,
                "REMOTE_LLM_API_KEY": BENCH_API_KEY,
                "REMOTE_LLM_PROVIDER": "remote_llm",
                "USE_LM_STUDIO": "0",
                "LM_STUDIO_BASE_URL": "http://127.0.0.1:9/v1",
            }
        )
        return env

    # ---- the run
    def run(self) -> dict[str, Any]:
        a = self.args
        c = a.concurrency
        fixed = a.server == "fixed"
        self.log(f"[bench] work folder {self.work}")
        base_url = self.start_fixed_server() if fixed else a.server.rstrip("/")
        stats_url = base_url.removesuffix("/v1") + "/stats" if fixed else None
        model = a.model or ("remote-model" if fixed else http_json(f"{base_url}/models")["data"][0]["id"])
        self.log(f"[bench] server {base_url} (model {model}); starting the embedded PostgreSQL in {self.pgdata}")
        self.start_postgres()

        nouns = load_nouns()
        total_nouns = len(nouns)
        ideal = c / (a.latency_ms / 1000.0) if fixed else None
        form, probe_s = pick_structured_form(base_url, nouns, model, a.max_tokens, a.temperature)
        if a.calls:
            calls = min(a.calls, total_nouns)
        elif fixed and ideal and total_nouns / ideal <= 60:
            calls = total_nouns  # every noun: also the "all nouns" side of the RSS comparison
        elif fixed and ideal:
            calls = max(50, int(ideal * 20))
        else:
            # A real server: about 40 s a phase if it answers one request at a time (llama.cpp, LM Studio).
            calls = max(16, min(200, round(40.0 / max(probe_s, 0.01))))
        bodies = request_bodies(nouns[:calls], model, form, a.max_tokens, a.temperature)
        bodies_file = self.work / "bodies.json"
        bodies_file.write_text(json.dumps(bodies))
        common = {
            "base_url": base_url,
            "model": model,
            "concurrency": c,
            "bodies_file": str(bodies_file),
            "calls": calls,
        }
        self.log(f"[bench] C={c}, {calls} calls per phase, response_format {form}")

        res: dict[str, Any] = {}
        for client in ("aiohttp", "httpx", "httpx_aiohttp"):
            if a.only_pipeline and client != "httpx_aiohttp":
                res[client] = {"skipped": "--only-pipeline"}
                continue
            self.log(f"[bench] direct {client} ...")
            res[client] = self.phase("direct", {**common, "client": client})
        if a.no_litellm or a.only_pipeline:
            res["litellm"] = {"skipped": "--no-litellm"}
        else:
            self.log("[bench] LiteLLM Router ...")
            res["litellm"] = self.phase("litellm", common)
        self.log("[bench] pipeline (noun_enrichments through Dagster) ...")
        pipe_spec = {
            "concurrency": c,
            "max_tokens": a.max_tokens,
            "temperature": a.temperature,
            "no_gc_freeze": a.no_gc_freeze,
            "ramp_up": a.ramp_up,
            "limit": calls if calls < total_nouns else None,
            "rematerialize": True,
            "stats_url": stats_url,
            "instance_dir": str(Path(tempfile.mkdtemp(prefix="dg-", dir=self.work))),
        }
        res["pipeline"] = self.phase("pipeline", pipe_spec, self.pipeline_env(base_url, model))

        rss_small = rss_all = None
        rss_reason = None
        if a.rss_check == "off" or (a.only_pipeline and a.rss_check == "auto"):
            rss_reason = "--rss-check off"
        elif calls >= total_nouns or a.rss_check == "on":
            if calls >= total_nouns:
                rss_all = res["pipeline"]["peak_rss_mb"]
            else:
                self.log("[bench] pipeline, all nouns (peak RSS) ...")
                spec = {
                    **pipe_spec,
                    "limit": None,
                    "rematerialize": False,
                    "limit_for_rss": True,
                    "instance_dir": str(Path(tempfile.mkdtemp(prefix="dg-", dir=self.work))),
                }
                rss_all = self.phase("pipeline", spec, self.pipeline_env(base_url, model))["peak_rss_mb"]
            self.log(f"[bench] pipeline, {RSS_SMALL_NOUNS} nouns (peak RSS) ...")
            spec = {
                **pipe_spec,
                "limit": RSS_SMALL_NOUNS,
                "rematerialize": False,
                "limit_for_rss": True,
                "instance_dir": str(Path(tempfile.mkdtemp(prefix="dg-", dir=self.work))),
            }
            res["pipeline_500"] = self.phase("pipeline", spec, self.pipeline_env(base_url, model))
            rss_small = res["pipeline_500"]["peak_rss_mb"]
        else:
            rss_reason = (
                f"not measured: this run enriches {calls} of {total_nouns} nouns; "
                "pass --rss-check on to enrich all of them too"
            )

        seq_calls = min(calls, a.sequential_calls)
        if a.only_pipeline:
            res["sequential"] = {"skipped": "--only-pipeline"}
        else:
            self.log(f"[bench] sequential loop ({seq_calls} calls) ...")
            res["sequential"] = self.phase("sequential", {**common, "calls": seq_calls, "concurrency": 1})

        return self.figures(
            res,
            c=c,
            fixed=fixed,
            ideal=ideal,
            calls=calls,
            form=form,
            model=model,
            base_url=base_url,
            total_nouns=total_nouns,
            rss_small=rss_small,
            rss_all=rss_all,
            rss_reason=rss_reason,
        )

    def figures(
        self,
        res: dict[str, Any],
        *,
        c: int,
        fixed: bool,
        ideal: float | None,
        calls: int,
        form: str,
        model: str,
        base_url: str,
        total_nouns: int,
        rss_small: float | None,
        rss_all: float | None,
        rss_reason: str | None,
    ) -> dict[str, Any]:
        a = self.args
        rate = {
            k: res[k].get("calls_per_s")
            for k in ("aiohttp", "httpx", "httpx_aiohttp", "litellm", "pipeline", "sequential")
        }
        direct_best = max(
            (v for k, v in rate.items() if k in ("aiohttp", "httpx", "httpx_aiohttp") and v), default=None
        )
        ideal_basis = "C / latency" if fixed else "best direct client (the server's measured capacity)"
        if ideal is None:
            ideal = direct_best
        pipe = res["pipeline"]
        b = rate["pipeline"]
        void = bool(fixed and ideal and (rate["aiohttp"] or 0) < VOID_THRESHOLD * ideal)

        def ratio(x: float | None, y: float | None) -> float | None:
            return round(x / y, 3) if x and y else None

        def r(x: float | None, n: int = 1) -> float | None:
            if x is None:
                return None
            if n == 1 and abs(x) < 10:  # slow servers: keep three significant digits
                return float(f"{x:.3g}")
            return round(x, n)

        out: dict[str, Any] = {
            "concurrency": c,
            "latency_ms": a.latency_ms if fixed else None,
            "calls": pipe["calls"],
            "ideal_calls_per_s": r(ideal),
            "direct_aiohttp_calls_per_s": r(rate["aiohttp"]),
            "direct_httpx_calls_per_s": r(rate["httpx"]),
            "litellm_calls_per_s": r(rate["litellm"]),
            "pipeline_calls_per_s": r(b),
            "pipeline_cpu_ms_per_call": r(pipe["cpu_ms_per_call"], 3),
            "pipeline_peak_rss_mb": r(pipe["peak_rss_mb"]),
            "logging_share_of_wall": r(pipe["logging_share_of_wall"], 4),
            "journal_share_of_wall": r(pipe.get("journal_share_of_wall"), 4),
            "run_startup_s": r(pipe["run_startup_s"], 2),
            # ---- beyond the contract: issue 6's figures and the run's own checks
            "void": void,
            "server": "fixed" if fixed else base_url,
            "model": model,
            "response_format": form,
            "ideal_basis": ideal_basis,
            "direct_httpx_aiohttp_calls_per_s": r(rate["httpx_aiohttp"]),
            "sequential_calls_per_s": r(rate["sequential"], 2),
            # With repairs (a real model's invalid JSON), the pipeline makes more calls than nouns.
            "pipeline_nouns_per_s": r(pipe["nouns"] / pipe["wall_s"]) if pipe.get("wall_s") else None,
            "pipeline_over_ideal": ratio(b, ideal),
            "pipeline_over_direct_httpx": ratio(b, rate["httpx"]),
            "pipeline_over_direct_httpx_aiohttp": ratio(b, rate["httpx_aiohttp"]),
            "pipeline_over_direct_best": ratio(b, direct_best),
            "pipeline_over_sequential": ratio(b, rate["sequential"]),
            "pipeline_over_litellm": ratio(b, rate["litellm"]),
            # What the pipeline adds to each call over the same HTTP stack used directly (httpx over
            # httpx-aiohttp): in latency, C x (1/b - 1/a) (each of the C slots turns over that much
            # slower), and in client CPU.
            "pipeline_overhead_ms_per_call": (
                r(1000.0 * c * (1.0 / b - 1.0 / rate["httpx_aiohttp"]), 2) if b and rate["httpx_aiohttp"] else None
            ),
            "pipeline_extra_cpu_ms_per_call": (
                r(pipe["cpu_ms_per_call"] - res["httpx_aiohttp"]["cpu_ms_per_call"], 3)
                if pipe.get("cpu_ms_per_call") and res["httpx_aiohttp"].get("cpu_ms_per_call")
                else None
            ),
            "cpu_ms_per_call": {
                k: r(res[k].get("cpu_ms_per_call"), 3)
                for k in ("aiohttp", "httpx", "httpx_aiohttp", "litellm", "pipeline", "sequential")
            },
            "pipeline_wall_s": r(pipe["wall_s"], 2),
            "pipeline_gc_during_calls": pipe.get("gc_during_calls"),
            "pipeline_breakdown_s": {k: r(x, 3) for k, x in pipe["breakdown_s"].items()},
            "pipeline_breakdown_cpu_s": {k: r(x, 3) for k, x in pipe["breakdown_cpu_s"].items()},
            "pipeline_run_total_s": r(pipe["run_total_s"], 2),
            "pipeline_run_total_cpu_ms_per_call": r(pipe["run_total_cpu_ms_per_call"], 3),
            "run_startup_cpu_s": r(pipe["run_startup_cpu_s"], 2),
            "control_plane_seconds": r(pipe["control_plane_seconds"], 3),
            "control_plane_insert_rows_per_s": r(pipe["insert_rows_per_s"], 0),
            "records_written": pipe["records_written"],
            "agent_run_rows": pipe["agent_run_rows"],
            "server_calls": pipe["server_calls"],
            "recorded_once": pipe["recorded_once"],
            "nouns": pipe["nouns"],
            "nouns_enriched": pipe["nouns_enriched"],
            "violations": pipe["violations"],
            "nouns_failed": pipe["nouns_failed"],
            "repairs": pipe["repairs"],
            "calls_failed": pipe["calls_failed"],
            "pipeline_latency_p50_ms": pipe["latency_p50_ms"],
            "pipeline_latency_p95_ms": pipe["latency_p95_ms"],
            "rematerialize_calls": pipe.get("rematerialize_calls"),
            "rematerialize_server_calls": pipe.get("rematerialize_server_calls"),
            "rematerialize_cache_hits": pipe.get("rematerialize_cache_hits"),
            "rematerialize_s": r(pipe.get("rematerialize_s"), 2),
            "lexicon_setup_s": r(pipe.get("lexicon_setup_s"), 2),
            "peak_rss_all_nouns_mb": r(rss_all),
            f"peak_rss_{RSS_SMALL_NOUNS}_nouns_mb": r(rss_small),
            "peak_rss_all_over_500": ratio(rss_all, rss_small),
            "rss_note": rss_reason,
            "peak_rss_by_stage_mb": {k: r(x) for k, x in pipe["peak_rss_at_mb"].items()},
            f"peak_rss_by_stage_{RSS_SMALL_NOUNS}_nouns_mb": (
                {k: r(x) for k, x in res["pipeline_500"]["peak_rss_at_mb"].items()} if "pipeline_500" in res else None
            ),
            "total_nouns": total_nouns,
            "sequential_calls": res["sequential"].get("calls"),
            "litellm_note": res["litellm"].get("skipped"),
            "failed_calls": {
                k: res[k].get("failed") for k in ("aiohttp", "httpx", "httpx_aiohttp", "litellm", "sequential")
            },
            "other_load_cores": {k: r(res[k].get("other_load_cores"), 2) for k in res},
            "server_and_pg_cpu_cores": {k: r(res[k].get("server_cpu_cores"), 2) for k in res},
            "cpus": os.cpu_count(),
        }
        return out


def table(f: dict[str, Any]) -> str:
    def v(x: Any, fmt: str = "{:.1f}") -> str:
        if isinstance(x, float) and fmt == "{:.1f}" and abs(x) < 10:
            fmt = "{:.3g}"
        return (
            "n/a"
            if x is None
            else (fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x))
        )

    cpu = f["cpu_ms_per_call"]
    ideal = f["ideal_calls_per_s"]

    def of_ideal(x: float | None) -> str:
        return "" if x is None or not ideal else f"{x / ideal:.2f}"

    rows = [
        ("ideal", ideal, None, ""),
        ("direct aiohttp", f["direct_aiohttp_calls_per_s"], cpu["aiohttp"], of_ideal(f["direct_aiohttp_calls_per_s"])),
        (
            "direct httpx (AsyncClient)",
            f["direct_httpx_calls_per_s"],
            cpu["httpx"],
            of_ideal(f["direct_httpx_calls_per_s"]),
        ),
        (
            "direct httpx + httpx-aiohttp",
            f["direct_httpx_aiohttp_calls_per_s"],
            cpu["httpx_aiohttp"],
            of_ideal(f["direct_httpx_aiohttp_calls_per_s"]),
        ),
        ("LiteLLM Router", f["litellm_calls_per_s"], cpu["litellm"], of_ideal(f["litellm_calls_per_s"])),
        (
            "pipeline (noun_enrichments)",
            f["pipeline_calls_per_s"],
            cpu["pipeline"],
            of_ideal(f["pipeline_calls_per_s"]),
        ),
        (
            "sequential loop (C=1)",
            f["sequential_calls_per_s"],
            cpu["sequential"],
            of_ideal(f["sequential_calls_per_s"]),
        ),
    ]
    server = f["server"] + (f" ({f['latency_ms']:g} ms)" if f["latency_ms"] else "")
    lines = [
        f"server {server}, model {f['model']}, C={f['concurrency']}, {f['calls']} pipeline calls, "
        f"{f['cpus']} CPUs; ideal = {f['ideal_basis']}",
        "",
        f"| {'client':<30} | {'calls/s':>8} | {'CPU ms/call':>11} | {'of ideal':>8} |",
        f"|{'-' * 32}|{'-' * 9}:|{'-' * 12}:|{'-' * 9}:|",
    ]
    for name, rate, c, oi in rows:
        lines.append(f"| {name:<30} | {v(rate):>8} | {v(c, '{:.3f}'):>11} | {oi:>8} |")
    lines += [
        "",
        f"(b)/(a) pipeline / direct httpx-aiohttp:  {v(f['pipeline_over_direct_httpx_aiohttp'], '{:.3f}')}"
        f"   / direct httpx: {v(f['pipeline_over_direct_httpx'], '{:.3f}')}"
        f"   / best direct: {v(f['pipeline_over_direct_best'], '{:.3f}')}",
        f"(b)/(c) pipeline / sequential loop:       {v(f['pipeline_over_sequential'], '{:.1f}')}x",
        f"pipeline / LiteLLM Router:                {v(f['pipeline_over_litellm'], '{:.2f}')}x",
        f"pipeline overhead per call:               {v(f['pipeline_overhead_ms_per_call'], '{:.2f}')} ms of latency "
        f"(C x (1/pipeline - 1/direct httpx-aiohttp)), "
        f"{v(f['pipeline_extra_cpu_ms_per_call'], '{:.3f}')} ms of client CPU",
        f"pipeline client CPU per call:             {v(f['pipeline_cpu_ms_per_call'], '{:.3f}')} ms "
        f"(first request to last record persisted; whole run incl. start-up: "
        f"{v(f['pipeline_run_total_cpu_ms_per_call'], '{:.3f}')} ms)",
        f"control-plane insert:                     {v(f['control_plane_insert_rows_per_s'], '{:.0f}')} rows/s, "
        f"{v(f['control_plane_seconds'], '{:.3f}')} s = {v(f['logging_share_of_wall'], '{:.2%}')} of the "
        f"pipeline's {v(f['pipeline_wall_s'], '{:.2f}')} s (group commits, in their own thread)",
        f"journal (every call durable as it arrives): {v(f.get('journal_share_of_wall'), '{:.2%}')} of the wall "
        "on the calls' event loop",
        f"pipeline wall by part (s):               {f['pipeline_breakdown_s']} "
        f"(CPU s: {f['pipeline_breakdown_cpu_s']})",
        f"run start-up (materialize() to first request): {v(f['run_startup_s'], '{:.2f}')} s "
        f"({v(f['run_startup_cpu_s'], '{:.2f}')} s CPU); whole run {v(f['pipeline_run_total_s'], '{:.2f}')} s",
        f"recorded once: {f['recorded_once']} ({f['agent_run_rows']} control.agent_run rows, "
        f"{f['records_written']} written, {v(f['server_calls'], '{}')} calls seen by the server, "
        f"{f['calls']} calls made)",
        f"pipeline nouns/s: {v(f['pipeline_nouns_per_s'])} ({f['nouns']} nouns, {f['calls']} calls)",
        f"outcomes: {f['nouns_enriched']} enriched, {f['violations']} violations, {f['nouns_failed']} failed, "
        f"{f['repairs']} repairs, {f['calls_failed']} failed calls",
        f"re-materialization: {v(f['rematerialize_calls'], '{}')} calls "
        f"({v(f['rematerialize_cache_hits'], '{}')} cache hits, "
        f"server saw {v(f['rematerialize_server_calls'], '{}')}), "
        f"{v(f['rematerialize_s'], '{:.2f}')} s",
        f"peak RSS: {v(f['pipeline_peak_rss_mb'])} MB this run; all {f['total_nouns']} nouns "
        f"{v(f['peak_rss_all_nouns_mb'])} MB vs {RSS_SMALL_NOUNS} nouns "
        f"{v(f[f'peak_rss_{RSS_SMALL_NOUNS}_nouns_mb'])} MB "
        f"(ratio {v(f['peak_rss_all_over_500'], '{:.3f}')})" + (f" [{f['rss_note']}]" if f["rss_note"] else ""),
        f"other load on the machine (cores, per phase; a URL server counts here): {f['other_load_cores']}",
    ]
    if f["litellm_note"]:
        lines.append(f"LiteLLM: {f['litellm_note']}")
    if f["void"]:
        lines.append(
            f"VOID: direct aiohttp reached {f['direct_aiohttp_calls_per_s']} calls/s, under "
            f"{VOID_THRESHOLD} x ideal ({ideal}): the server or the machine is the bottleneck, "
            "so these figures say nothing about the client"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--server",
        default="fixed",
        help="'fixed' (start the fixed-latency server) or a base URL such as http://127.0.0.1:8080/v1",
    )
    p.add_argument("--latency-ms", type=float, default=200.0, help="latency of the fixed server")
    p.add_argument("--concurrency", "-c", type=int, default=16)
    p.add_argument(
        "--calls",
        type=int,
        default=None,
        help="calls per phase (default: every noun when that takes <= 60 s at the ideal rate, "
        "else 20 s of calls; for a URL server, about 40 s of calls one at a time)",
    )
    p.add_argument("--sequential-calls", type=int, default=40)
    p.add_argument("--model", default=None, help="model to ask for (default: the server's first)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument(
        "--rss-check",
        choices=("auto", "on", "off"),
        default="auto",
        help="peak RSS of all nouns vs 500 (auto: when this run enriches every noun anyway)",
    )
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="run the pipeline without the runner's frozen heap (to compare with before that change)",
    )
    p.add_argument(
        "--ramp-up", type=float, default=None, help="the asset's ramp_up_seconds (default: the asset's own, 0.2 s)"
    )
    p.add_argument(
        "--only-pipeline",
        action="store_true",
        help="quick look: the pipeline and direct httpx-aiohttp only (not the full figures)",
    )
    p.add_argument("--phase-timeout", type=float, default=1800.0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--keep", action="store_true", help="keep the /tmp work folder (logs)")
    p.add_argument(
        "--profile-pipeline",
        metavar="FILE",
        default=None,
        help="record the main pipeline phase with py-spy (collapsed stacks) into FILE",
    )
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        run_phase_main(args.phase, args.spec)
        return
    bench = Bench(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        figures = bench.run()
    finally:
        bench.cleanup()
    print(json.dumps(figures) if args.json else table(figures))


if __name__ == "__main__":
    main()
