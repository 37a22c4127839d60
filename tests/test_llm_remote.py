"""The remote backend: the real llama.cpp engine standing in for a remote API, the fault server for
rate limits and outages, and a recognizable fake key that must never show up anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest

from gemantria_dag.llm.call import RetryPolicy
from gemantria_dag.llm.errors import parse_retry_after
from gemantria_dag.llm.reply import Failure
from gemantria_dag.llm.results import ErrorCode, LLMError
from gemantria_dag.settings import get_settings, reset_settings_cache
from resources.llm.remote import RemoteLLMResource
from tests.fixtures.llm import LlamaServer
from tests.servers.fault_server import (
    FaultServer,
    chat_completion,
    disconnect,
    json_reply,
    model_not_found,
    openai_models,
    rate_limited,
    server_error,
    unauthorized,
)

KEY = "sk-test-SECRET-4242"
CHAT = "POST /v1/chat/completions"
MODELS = "GET /v1/models"
MODEL = "gpt-4o-mini"
FAST = {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05}


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REMOTE_LLM_API_KEY", KEY)
    reset_settings_cache()
    return KEY


@pytest.fixture
def remote_factory(api_key: str) -> Iterator[Any]:
    made: list[RemoteLLMResource] = []

    def make(base_url: str | None, model: str | None = MODEL, **config: Any) -> RemoteLLMResource:
        resource = RemoteLLMResource(base_url=base_url, model=model, **config)
        made.append(resource)
        return resource

    yield make
    for resource in made:
        resource.close()


# ---------------------------------------------------------------- against the real engine


def test_completion_against_a_real_engine(remote_factory: Any, llama_server: LlamaServer) -> None:
    remote = remote_factory(llama_server.base_url, llama_server.model, provider="openrouter")
    result = remote.complete("Name a colour.", max_tokens=10)
    assert result.ok and result.response, result.error
    meta = result.metadata
    assert meta.backend == "openrouter" and meta.attempts == 1 and meta.model == llama_server.model
    assert meta.prompt_tokens and meta.completion_tokens and meta.tokens_per_second and meta.tokens_per_second > 0


def test_async_completion_against_a_real_engine(remote_factory: Any, llama_server: LlamaServer) -> None:
    remote = remote_factory(llama_server.base_url, llama_server.model)

    async def run() -> Any:
        try:
            return await asyncio.gather(*(remote.acomplete("Hi.", max_tokens=6) for _ in range(3)))
        finally:
            await remote.aclose()

    results = asyncio.run(run())
    assert all(r.ok and r.metadata.backend == "remote_llm" for r in results)


def test_health_against_a_real_engine(remote_factory: Any, llama_server: LlamaServer) -> None:
    h = remote_factory(llama_server.base_url, llama_server.model).health()
    assert h.ok and h.mode == "remote_ready"
    assert h.details.probe == "/v1/models" and h.details.model_present is True
    assert h.details.provider == "remote_llm" and h.details.available_models == [llama_server.model]


def test_from_settings(monkeypatch: pytest.MonkeyPatch, api_key: str) -> None:
    monkeypatch.setenv("REMOTE_LLM_BASE_URL", "https://api.example.test/v1/")
    monkeypatch.setenv("REMOTE_LLM_MODEL", MODEL)
    monkeypatch.setenv("REMOTE_LLM_PROVIDER", "openai")
    monkeypatch.setenv("REMOTE_LLM_TIMEOUT_SECONDS", "20")
    reset_settings_cache()
    remote = RemoteLLMResource.from_settings(get_settings())
    assert (remote.base_url, remote.model, remote.provider, remote.timeout_seconds, remote.backend_name) == (
        "https://api.example.test/v1",
        MODEL,
        "openai",
        20.0,
        "openai",
    )
    assert remote.max_attempts == 4
    # The key is read from the settings when needed, never kept in the resource's config.
    assert KEY not in repr(remote) and KEY not in json.dumps(remote.model_dump())
    assert not any("key" in name or "token" in name for name in type(remote).model_fields)


# ---------------------------------------------------------------- health


def test_health_lists_models_and_never_spends_a_completion(remote_factory: Any, fault_server: FaultServer) -> None:
    fault_server.script(MODELS, json_reply(openai_models([MODEL, "gpt-4o"])))
    h = remote_factory(fault_server.base_url).health()
    assert h.ok and h.mode == "remote_ready" and h.details.model_present is True
    assert [(r.method, r.path) for r in fault_server.requests] == [("GET", "/v1/models")]
    assert fault_server.requests[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("missing", ["base_url", "key", "model"])
def test_health_unconfigured_is_remote_off(
    monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer, missing: str
) -> None:
    if missing != "key":
        monkeypatch.setenv("REMOTE_LLM_API_KEY", KEY)
    reset_settings_cache()
    remote = RemoteLLMResource(
        base_url=None if missing == "base_url" else fault_server.base_url, model=None if missing == "model" else MODEL
    )
    h = remote.health()
    assert not h.ok and h.mode == "remote_off" and h.details.message
    assert fault_server.requests == []


def test_health_connection_refused_is_remote_off(remote_factory: Any, closed_port: int) -> None:
    h = remote_factory(f"http://127.0.0.1:{closed_port}/v1").health()
    assert h.mode == "remote_off" and h.details.error and h.details.error.code == ErrorCode.CONNECTION_REFUSED


@pytest.mark.parametrize(
    ("listing", "code"),
    [
        (unauthorized(), ErrorCode.UNAUTHORIZED),
        (json_reply(openai_models(["gpt-4o"])), ErrorCode.MODEL_NOT_FOUND),
        (server_error(), ErrorCode.SERVER_ERROR),
        (json_reply({"detail": "Not Found"}, status=404), ErrorCode.BAD_REQUEST),
    ],
    ids=["401", "model missing", "500", "no /models route"],
)
def test_health_errors(remote_factory: Any, fault_server: FaultServer, listing: Any, code: ErrorCode) -> None:
    fault_server.script(MODELS, listing)
    h = remote_factory(fault_server.base_url).health()
    assert not h.ok and h.mode == "error" and h.details.error and h.details.error.code == code


# ---------------------------------------------------------------- retries


def test_retry_after_is_honoured(
    remote_factory: Any, fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fault_server.script(CHAT, rate_limited(retry_after=0.2), json_reply(chat_completion("ok", model=MODEL)))
    result = remote_factory(fault_server.base_url, **FAST).complete("hi")
    assert result.ok and result.metadata.attempts == 2
    assert "retrying in 0.20 s (Retry-After)" in caplog.text


def test_retries_5xx_and_dropped_connections(remote_factory: Any, fault_server: FaultServer) -> None:
    fault_server.script(
        CHAT,
        server_error(),
        json_reply({"error": {"message": "Bad gateway"}}, status=502),
        disconnect(),
        json_reply(chat_completion("finally", model=MODEL)),
    )
    result = remote_factory(fault_server.base_url, **FAST).complete("hi")
    # A connection closed before any byte of an answer is sent again at once: not an attempt.
    assert result.ok and result.response == "finally" and result.metadata.attempts == 3
    assert len(fault_server.requests_to(CHAT)) == 4


def test_gives_up_after_max_attempts(remote_factory: Any, fault_server: FaultServer) -> None:
    fault_server.script(CHAT, server_error())
    result = remote_factory(fault_server.base_url, max_attempts=3, **FAST).complete("hi")
    assert not result.ok and result.error and result.error.code == ErrorCode.SERVER_ERROR
    assert result.metadata.attempts == 3 and len(fault_server.requests_to(CHAT)) == 3


def test_connection_refused_is_retried(remote_factory: Any, closed_port: int) -> None:
    result = remote_factory(f"http://127.0.0.1:{closed_port}/v1", **FAST).complete("hi")
    assert result.error and result.error.code == ErrorCode.CONNECTION_REFUSED and result.metadata.attempts == 4


def test_a_wait_past_the_budget_gives_up_at_once(remote_factory: Any, fault_server: FaultServer) -> None:
    fault_server.script(CHAT, rate_limited(retry_after=30))
    result = remote_factory(fault_server.base_url, max_total_seconds=5, **FAST).complete("hi")
    assert result.error and result.error.code == ErrorCode.RATE_LIMITED and result.metadata.attempts == 1


@pytest.mark.parametrize(
    "reply",
    [unauthorized(), model_not_found(MODEL), json_reply({"error": {"message": "bad"}}, status=400)],
    ids=["401", "404 model", "400"],
)
def test_client_errors_are_not_retried(remote_factory: Any, fault_server: FaultServer, reply: Any) -> None:
    fault_server.script(CHAT, reply)
    result = remote_factory(fault_server.base_url, **FAST).complete("hi")
    assert not result.ok and result.metadata.attempts == 1


def test_async_retries(remote_factory: Any, fault_server: FaultServer) -> None:
    fault_server.script(CHAT, rate_limited(retry_after=0), disconnect(), json_reply(chat_completion("ok")))
    remote = remote_factory(fault_server.base_url, **FAST)

    async def run() -> Any:
        try:
            return await remote.acomplete("hi")
        finally:
            await remote.aclose()

    result = asyncio.run(run())
    # The 429 is an attempt; the dropped connection is sent again at once, on a new connection.
    assert result.ok and result.metadata.attempts == 2 and len(fault_server.requests_to(CHAT)) == 3
    # The async hot path talks to aiohttp directly: it still sends the key and a JSON body.
    chats = fault_server.requests_to(CHAT)
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in chats)
    assert json.loads(chats[-1].body)["messages"] == [{"role": "user", "content": "hi"}]


def test_async_calls_go_through_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch, remote_factory: Any, fault_server: FaultServer
) -> None:
    """HTTP_PROXY is looked up once per client, not per request, and still used (the fault server is the proxy)."""
    target = "http://llm.example.invalid/v1"
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{fault_server.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fault_server.script(f"POST {target}/chat/completions", json_reply(chat_completion("via proxy")))
    remote = remote_factory(target)

    async def run() -> Any:
        try:
            return [await remote.acomplete(f"q{i}") for i in range(3)]
        finally:
            await remote.aclose()

    results = asyncio.run(run())
    assert [r.response for r in results] == ["via proxy"] * 3
    assert len(fault_server.requests) == 3  # absolute-form targets: the proxy saw every call


def test_unconfigured_remote_does_not_raise(api_key: str) -> None:
    result = RemoteLLMResource(model=MODEL).complete("hi")
    assert not result.ok and result.error and result.error.code == ErrorCode.BAD_REQUEST
    assert "REMOTE_LLM_BASE_URL" in result.error.message and result.metadata.attempts == 0


def test_backoff_policy() -> None:
    policy = RetryPolicy(max_attempts=5, max_total_seconds=60, backoff_base_seconds=1, backoff_max_seconds=4)
    rng = random.Random(7)
    five_hundred = Failure(LLMError(code=ErrorCode.SERVER_ERROR, message="x"))
    delays = [policy.delay_before_next(n, five_hundred, 0.0, rng) for n in (1, 2, 3, 4)]
    caps = [1, 2, 4, 4]
    assert all(d is not None and cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert policy.delay_before_next(5, five_hundred, 0.0, rng) is None  # attempts spent
    assert policy.delay_before_next(1, five_hundred, 59.9, rng) is None  # budget spent
    told = Failure(LLMError(code=ErrorCode.RATE_LIMITED, message="x"), retry_after=7.0)
    assert policy.delay_before_next(1, told, 0.0, rng) == 7.0
    fatal = Failure(LLMError(code=ErrorCode.UNAUTHORIZED, message="x"))
    assert policy.delay_before_next(1, fatal, 0.0, rng) is None


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: go now


# ---------------------------------------------------------------- the key never leaks


def test_the_key_never_appears_anywhere(
    monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REMOTE_LLM_API_KEY", KEY)
    monkeypatch.setenv("LM_STUDIO_API_TOKEN", KEY)
    reset_settings_cache()
    caplog.set_level(logging.DEBUG)
    from resources.llm.lm_studio import LMStudioResource

    # Servers that echo the refused key (as OpenAI does), and retries that log.
    fault_server.script(CHAT, server_error(f"upstream rejected {KEY}"), unauthorized(echo_key=KEY))
    fault_server.script(MODELS, unauthorized(echo_key=KEY))
    for route in ("GET /api/v1/models", "GET /api/v0/models"):
        fault_server.script(route, unauthorized(echo_key=KEY))
    remote = RemoteLLMResource(base_url=fault_server.base_url, model=MODEL, **FAST)
    lm = LMStudioResource(base_url=fault_server.base_url, model=MODEL)
    outputs: list[str] = []
    try:
        for resource in (remote, lm):
            outputs += [repr(resource), str(resource), json.dumps(resource.model_dump())]
            result = resource.complete("hi")
            assert (
                not result.ok and result.error and result.error.code in (ErrorCode.UNAUTHORIZED, ErrorCode.SERVER_ERROR)
            )
            outputs += [result.model_dump_json(), repr(result), str(result.error)]
            health = resource.health()
            assert health.details.error and health.details.error.code == ErrorCode.UNAUTHORIZED
            outputs += [health.model_dump_json(), repr(health)]
    finally:
        remote.close()
        lm.close()
    # The key was really used ...
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in fault_server.requests)
    assert "retrying" in caplog.text
    # ... and shows up nowhere.
    outputs.append(caplog.text)
    leaks = [text for text in outputs if KEY in text]
    assert leaks == []
    assert "[REDACTED]" in "".join(outputs)
