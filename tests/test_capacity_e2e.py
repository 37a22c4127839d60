"""The route limiter and the rate-limit pacer against real loopback servers (issue 17): a server with a hidden
capacity and one that enforces OpenAI-style rate limits. The calls go through the real remote resource and the
failover router, as a run's do. Every assertion is a count or a limit, never a time."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gemantria_dag.enrichment.plan import route_limiter
from gemantria_dag.llm.limiter import ConcurrencyLimiter
from gemantria_dag.names import REMOTE
from gemantria_dag.routing.circuit_breaker import CircuitBreaker
from gemantria_dag.routing.failover import FailoverRouter, Route
from gemantria_dag.settings import get_settings, reset_settings_cache
from resources.llm.remote import RemoteLLMResource
from tests.fixtures.processes import REPO_ROOT, cli_env, free_port, start_group, stop_group, wait_until

MODEL = "remote-model"
WORKERS = 32


def _http(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _start(module: str, tmp_path_factory: pytest.TempPathFactory, *args: str) -> tuple[Any, str]:
    port = free_port()
    log = tmp_path_factory.mktemp(module.rsplit(".", 1)[-1]) / "server.log"
    proc = start_group(
        [sys.executable, "-m", module, "--port", str(port), *args], env=cli_env(), log=log, cwd=REPO_ROOT
    )
    root = f"http://127.0.0.1:{port}"
    wait_until(lambda: bool(_http(f"{root}/stats")), timeout_s=30, what=module, proc=proc, log=log)
    return proc, root


@pytest.fixture(scope="module")
def hidden_capacity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, root = _start("tests.servers.hidden_capacity", tmp_path_factory, "--service-ms", "100")
    try:
        yield root
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def rate_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, root = _start("tests.servers.rate_limited", tmp_path_factory)
    try:
        yield root
    finally:
        stop_group(proc)


@pytest.fixture
def ceiling(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("REMOTE_LLM_MAX_CONCURRENCY", str(WORKERS))
    reset_settings_cache()
    return WORKERS


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Strong's H{i}: one sentence about this noun, as JSON."}]


def run_calls(root: str, calls: int, limiter: ConcurrencyLimiter | None = None, max_tokens: int = 64):
    """`calls` requests through a remote resource and a one-route router with WORKERS workers:
    (results, the route's limiter, the resource's pacer)."""
    backend = RemoteLLMResource(base_url=f"{root}/v1", model=MODEL, max_connections=WORKERS)
    limiter = limiter or route_limiter(REMOTE, backend, get_settings(), None)
    route = Route(REMOTE, backend, MODEL, limiter.ceiling, CircuitBreaker(100, 30.0), limiter=limiter)
    router = FailoverRouter(route, None)
    todo = iter(range(calls))
    results = []

    async def worker() -> None:
        for i in todo:
            attempts = await router.complete(
                messages=_messages(i), temperature=0.2, max_tokens=max_tokens, response_format=None
            )
            results.append(attempts[-1].result)

    async def go() -> None:
        try:
            await asyncio.gather(*(worker() for _ in range(WORKERS)))
        finally:
            await backend.aclose()

    asyncio.run(go())
    return results, limiter, backend.pacer


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_the_limit_settles_at_the_hidden_capacity(hidden_capacity: str, ceiling: int, slots: int) -> None:
    _http(f"{hidden_capacity}/admin/capacity", {"slots": slots, "service_ms": 100})
    results, limiter, _ = run_calls(hidden_capacity, 40 * slots + 60)
    report = limiter.report()
    assert all(r.ok for r in results)
    # Started at 4 (the remote's default), doubled while latency held, then found the slots from latency alone.
    assert slots <= report.settled <= slots + 1, report
    assert report.limit <= slots + 1, report
    assert report.high < ceiling  # it never ran to the ceiling, as a fixed 32 would


def test_pacing_keeps_calls_under_the_remote_rate_limit(rate_limited: str, ceiling: int) -> None:
    """1,200 requests a minute with 1 s of burst (20 at once): 200 calls from 32 workers, at an adaptive limit
    that has no latency reason to stay low. The headers pace them: (almost) none is refused."""
    _http(f"{rate_limited}/admin/limits", {"rpm": 1200, "tpm": 10_000_000, "burst_s": 1, "latency_ms": 50})
    results, limiter, pacer = run_calls(rate_limited, 200)
    stats = _http(f"{rate_limited}/stats")
    assert all(r.ok for r in results)
    assert stats["chat"] == 200
    assert stats["rate_limited"] <= 2, stats  # a fixed 32 in flight unpaced: over 100 of them
    waited = sum(r.metadata.rate_limit_wait_ms is not None for r in results)
    assert 100 <= waited <= pacer.stats.waited_calls  # they waited for the allowance instead (retries count apart)
    assert limiter.report().overloads == stats["rate_limited"]


def test_tokens_per_minute_pace_too(rate_limited: str, ceiling: int) -> None:
    """Requests plenty, tokens scarce: 60,000 tokens a minute is 1,000 a second, and each call costs its prompt
    and max_tokens=200 (the server counts about 215): under five calls a second."""
    _http(f"{rate_limited}/admin/limits", {"rpm": 60_000, "tpm": 60_000, "burst_s": 1, "latency_ms": 20})
    results, _, pacer = run_calls(rate_limited, 30, max_tokens=200)
    stats = _http(f"{rate_limited}/stats")
    assert all(r.ok for r in results)
    assert stats["rate_limited"] <= 2, stats
    assert pacer.stats.waited_calls >= 20


def test_a_429_pauses_every_worker(rate_limited: str, ceiling: int) -> None:
    """32 calls go out at once (a fixed limit, before any header is known) into a bucket of 5: the server
    refuses most of them. The first 429's retry-after pauses every worker, and what the headers say then paces
    them: the refusals are that first wave's, not a storm of retries."""
    _http(f"{rate_limited}/admin/limits", {"rpm": 600, "tpm": 10_000_000, "burst_s": 0.5, "latency_ms": 50})
    fixed = ConcurrencyLimiter(initial=WORKERS, ceiling=WORKERS, adaptive=False, source="explicit")
    results, _, pacer = run_calls(rate_limited, 60, limiter=fixed)
    stats = _http(f"{rate_limited}/stats")
    assert all(r.ok for r in results)  # every refused call waited and went through on a retry
    assert stats["chat"] == 60
    first_wave = WORKERS - 5
    assert first_wave - 3 <= stats["rate_limited"] <= first_wave + 3, stats
    assert sum(r.metadata.rate_limited for r in results) == stats["rate_limited"]
    assert pacer.stats.rate_limited == stats["rate_limited"]
