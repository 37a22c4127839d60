"""Every failure a backend can meet, produced over real sockets: the fault server or a closed port.

Each completion fault runs through both paths (sync httpx, and async httpx over aiohttp), since
the two transports report the same fault with different exceptions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gemantria_dag.llm.probe import lm_studio_health
from gemantria_dag.llm.results import CompletionResult, ErrorCode
from resources.llm.backend import LLMBackend
from resources.llm.lm_studio import LMStudioResource
from tests.servers.fault_server import (
    FaultServer,
    Reply,
    bad_request,
    chat_chunks,
    chat_completion,
    disconnect,
    hang,
    json_object_rejected,
    json_reply,
    json_schema_rejected,
    model_crashed,
    model_not_found,
    no_models_loaded,
    rate_limited,
    raw_reply,
    server_error,
    sse,
    truncated,
    unauthorized,
    unknown_route,
)

CHAT = "POST /v1/chat/completions"
MODEL = "qwen2.5-7b-instruct"
SCHEMA = {"type": "object", "properties": {"gloss": {"type": "string"}}, "required": ["gloss"]}

Caller = Callable[..., CompletionResult]


_OPEN: list[LLMBackend] = []


@pytest.fixture(autouse=True)
def _close_resources() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def lm_at(url: str, **config: Any) -> LMStudioResource:
    """A resource closed when the test ends (its pooled sockets with it)."""
    resource = LMStudioResource(base_url=url, model=MODEL, **config)
    _OPEN.append(resource)
    return resource


# ---------------------------------------------------------------- one test per error code


FAULTS: list[tuple[str, Reply, ErrorCode]] = [
    ("model unknown (404 model_not_found)", model_not_found("nope"), ErrorCode.MODEL_NOT_FOUND),
    ("nothing loaded (400)", no_models_loaded(400), ErrorCode.MODEL_NOT_LOADED),
    ("nothing loaded (404, LM Studio 0.3.5)", no_models_loaded(404), ErrorCode.MODEL_NOT_LOADED),
    ("429", rate_limited(retry_after=1), ErrorCode.RATE_LIMITED),
    ("500", server_error(), ErrorCode.SERVER_ERROR),
    ("crashed model (400, plain-string error)", model_crashed(), ErrorCode.SERVER_ERROR),
    ("closed without an answer", disconnect(), ErrorCode.SERVER_ERROR),
    ("malformed JSON", raw_reply(b'{"id": "chatcmpl-1", "choices": [{"mess'), ErrorCode.BAD_RESPONSE),
    ("not JSON at all", raw_reply(b"<html>Bad Gateway</html>", content_type="text/html"), ErrorCode.BAD_RESPONSE),
    ("no choices", json_reply({"object": "chat.completion", "model": MODEL, "choices": []}), ErrorCode.BAD_RESPONSE),
    ("unknown route, 200 with an error body", unknown_route("POST", "/v1/chat/completions"), ErrorCode.BAD_RESPONSE),
    ("400 invalid request", bad_request(), ErrorCode.BAD_REQUEST),
    ("401", unauthorized(), ErrorCode.UNAUTHORIZED),
    ("truncated body", truncated(chat_completion("cut here")), ErrorCode.TRUNCATED),
]


@pytest.mark.parametrize(("reply", "code"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_completion_fault_becomes_an_error_code(
    fault_server: FaultServer, call: Caller, reply: Reply, code: ErrorCode
) -> None:
    fault_server.script(CHAT, reply)
    result = call(lm_at(fault_server.base_url), "Define אב.", max_tokens=8)
    assert not result.ok and result.response is None
    assert result.error is not None and result.error.code == code, result.error
    assert result.error.message
    assert result.metadata.attempts == 1 and result.metadata.backend == "lm_studio"
    assert result.metadata.requested_model == MODEL and result.metadata.latency_ms > 0
    # A connection closed with no byte of an answer is sent again once, on a new connection.
    assert len(fault_server.requests_to(CHAT)) == (2 if reply.action == "disconnect" else 1)


def test_connection_refused(closed_port: int, call: Caller) -> None:
    result = call(lm_at(f"http://127.0.0.1:{closed_port}/v1"), "hello")
    assert not result.ok and result.error is not None
    assert result.error.code == ErrorCode.CONNECTION_REFUSED
    assert result.metadata.attempts == 1


def test_hung_server_times_out(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, hang())
    result = call(lm_at(fault_server.base_url, timeout_seconds=0.3), "hello")
    assert not result.ok and result.error is not None and result.error.code == ErrorCode.TIMEOUT


def test_stream_cut_before_finish_reason_is_truncated(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, sse(chat_chunks(["half ", "an ans"], finish_reason=None), done=False))
    result = call(lm_at(fault_server.base_url), "hello", stream=True)
    assert not result.ok and result.error is not None and result.error.code == ErrorCode.TRUNCATED


def test_stream_with_finish_reason(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, sse(chat_chunks(["Shalom", ", ", "world"], finish_reason="stop")))
    result = call(lm_at(fault_server.base_url), "hello", stream=True)
    assert result.ok and result.response == "Shalom, world"
    meta = result.metadata
    assert meta.finish_reason == "stop" and meta.ttft_ms is not None
    # No usage chunk: one content event counts as one token.
    assert meta.completion_tokens == 3 and meta.tokens_per_second and meta.tokens_per_second > 0
    assert fault_server.requests_to(CHAT)[0].json()["stream"] is True


def test_stream_error_event(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, sse([{"error": {"message": "No models loaded. Load one.", "type": "x"}}]))
    result = call(lm_at(fault_server.base_url), "hello", stream=True)
    assert result.error is not None and result.error.code == ErrorCode.MODEL_NOT_LOADED


def test_answer_from_another_model_is_recorded(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(
        CHAT, json_reply(chat_completion("ok", model="llama-3.2-1b-instruct", prompt_tokens=9, completion_tokens=1))
    )
    result = call(lm_at(fault_server.base_url), "hello")
    assert result.ok and result.response == "ok"
    meta = result.metadata
    assert (meta.model, meta.requested_model) == ("llama-3.2-1b-instruct", MODEL)
    assert meta.model_substituted
    assert (meta.prompt_tokens, meta.completion_tokens) == (9, 1)
    sent = fault_server.requests_to(CHAT)[0].json()
    assert sent["model"] == MODEL and sent["messages"] == [{"role": "user", "content": "hello"}]
    assert sent["max_tokens"] == 1024 and sent["temperature"] == 0.7 and "response_format" not in sent


# ---------------------------------------------------------------- structured output per server


def test_structured_output_learns_each_servers_form(fault_server: FaultServer, call: Caller) -> None:
    lm = lm_at(fault_server.base_url)
    fmt = {"type": "json_schema", "json_schema": {"name": "gloss", "schema": SCHEMA}}
    ok = json_reply(chat_completion('{"gloss": "father"}'))
    # A server that refuses json_schema, as llama-cpp-python's does (a 500): json_object taken.
    fault_server.script(CHAT, json_schema_rejected(), ok)
    first = call(lm, "gloss?", response_format=fmt)
    assert first.ok and first.metadata.attempts == 2 and first.metadata.response_format_type == "json_object"
    sent = [r.json()["response_format"] for r in fault_server.requests_to(CHAT)]
    assert sent[0] == {"type": "json_schema", "json_schema": {"name": "gloss", "schema": SCHEMA}}
    assert sent[1] == {"type": "json_object", "schema": SCHEMA}
    assert lm.learned_structured_form == "json_object"
    # Remembered: the next call goes straight to json_object.
    fault_server.script(CHAT, ok)
    assert call(lm, "gloss?", response_format=fmt).metadata.attempts == 1
    # Now an LM Studio answers: json_object refused with a 400, json_schema taken, and remembered.
    fault_server.script(CHAT, json_object_rejected(), ok)
    third = call(lm, "gloss?", response_format=fmt)
    assert third.ok and third.metadata.attempts == 2 and third.metadata.response_format_type == "json_schema"
    assert lm.learned_structured_form == "json_schema"
    lm.close()


def test_structured_fallback_happens_once(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, json_schema_rejected(), json_object_rejected())
    result = call(lm_at(fault_server.base_url), "gloss?", response_format={"type": "json_object", "schema": SCHEMA})
    assert not result.ok and result.metadata.attempts == 2
    assert result.error is not None and result.error.code == ErrorCode.BAD_REQUEST


def test_other_errors_do_not_trigger_the_fallback(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, server_error("CUDA out of memory"))
    result = call(lm_at(fault_server.base_url), "gloss?", response_format={"type": "json_object", "schema": SCHEMA})
    assert result.error is not None and result.error.code == ErrorCode.SERVER_ERROR
    assert result.metadata.attempts == 1


def test_pinned_form_never_falls_back(fault_server: FaultServer, call: Caller) -> None:
    fault_server.script(CHAT, json_schema_rejected())
    lm = lm_at(fault_server.base_url, structured_output="json_schema")
    result = call(lm, "gloss?", response_format={"type": "json_object", "schema": SCHEMA})
    assert result.metadata.attempts == 1 and result.metadata.response_format_type == "json_schema"
    assert lm.learned_structured_form is None


# ---------------------------------------------------------------- programming errors raise


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"prompt": ""},
        {"messages": []},
        {"messages": [{"content": "no role"}]},
        {"prompt": "a", "max_tokens": 0},
        {"prompt": "a", "max_tokens": -5},
        {"prompt": "a", "temperature": -0.1},
        {"prompt": "a", "temperature": 2.5},
        {"prompt": "a", "response_format": {"type": "yaml"}},
        {"prompt": "a", "response_format": {"type": "json_schema"}},
    ],
    ids=[
        "neither",
        "both",
        "empty prompt",
        "no messages",
        "message without role",
        "max_tokens 0",
        "negative max_tokens",
        "temperature below 0",
        "temperature above 2",
        "unknown format",
        "json_schema without schema",
    ],
)
def test_bad_arguments_raise(closed_port: int, call: Caller, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        call(lm_at(f"http://127.0.0.1:{closed_port}/v1"), **kwargs)


# ---------------------------------------------------------------- pooled clients


# A loop that ends without aclose() cannot close its sockets any more: the collector does, with a
# ResourceWarning. What must not happen is aiohttp's "Unclosed client session" error log.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_clients_reopen_after_close_and_survive_event_loops(
    fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    fault_server.script(CHAT, json_reply(chat_completion("ok")))
    lm = lm_at(fault_server.base_url)
    assert lm.complete("a").ok
    lm.close()
    assert lm.pools.open_count == (0, 0)
    assert lm.complete("b").ok  # a new pooled client, lazily
    # Two event loops that end without aclose(): each gets its own client, the dead one is dropped.
    caplog.set_level(logging.DEBUG)
    assert asyncio.run(lm.acomplete("c")).ok
    assert asyncio.run(lm.acomplete("d")).ok
    assert lm.pools.open_count == (1, 1)
    lm.close()
    assert lm.pools.open_count == (0, 0)
    gc.collect()
    assert "Unclosed" not in caplog.text


def test_many_concurrent_async_calls_on_one_pool(fault_server: FaultServer) -> None:
    fault_server.script(CHAT, json_reply(chat_completion("ok")))
    lm = lm_at(fault_server.base_url, max_connections=8)

    async def run() -> list[CompletionResult]:
        try:
            return await asyncio.gather(*(lm.acomplete(f"n{i}") for i in range(40)))
        finally:
            await lm.aclose()

    results = asyncio.run(run())
    assert all(r.ok for r in results) and len(fault_server.requests_to(CHAT)) == 40


# ---------------------------------------------------------------- LM Studio health against its listings


def health(server: FaultServer, model: str | None = MODEL, **kwargs: Any):  # noqa: ANN201
    return lm_studio_health(base_url=server.base_url, model=model, **kwargs)


def test_health_lm_studio_04_loaded(fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v1={MODEL: True, "llama-3.2-1b-instruct": False})
    h = health(fault_server)
    assert h.ok and h.mode == "lm_ready"
    d = h.details
    assert (d.probe, d.server_kind) == ("/api/v1/models", "lm_studio")
    assert d.model_present is True and d.model_loaded is True
    assert d.available_models == [MODEL, "llama-3.2-1b-instruct"]


def test_health_lm_studio_04_downloaded_not_loaded(fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v1={MODEL: False})
    h = health(fault_server)
    assert not h.ok and h.mode == "error"
    assert h.details.error is not None and h.details.error.code == ErrorCode.MODEL_NOT_LOADED
    assert f"lms load {MODEL}" in h.details.error.message
    assert h.details.model_present is True and h.details.model_loaded is False


def test_health_legacy_api_v0_loaded(fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v0={MODEL: "loaded", "phi-3": "not-loaded"})
    h = health(fault_server)
    assert h.ok and h.mode == "lm_ready"
    assert (h.details.probe, h.details.server_kind) == ("/api/v0/models", "lm_studio_legacy")
    assert h.details.model_loaded is True


def test_health_legacy_not_loaded(fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v0={MODEL: "not-loaded", "phi-3": "loaded"})
    h = health(fault_server)
    assert h.mode == "error" and h.details.error and h.details.error.code == ErrorCode.MODEL_NOT_LOADED
    assert h.details.model_present is True and h.details.model_loaded is False


def test_health_model_not_downloaded(fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v0={"phi-3": "loaded"})
    h = health(fault_server)
    assert h.mode == "error" and h.details.error and h.details.error.code == ErrorCode.MODEL_NOT_FOUND
    assert h.details.model_present is False and h.details.available_models == ["phi-3"]


def test_health_without_a_model_needs_something_loaded(fault_server: FaultServer) -> None:
    fault_server.as_lm_studio(v0={"phi-3": "not-loaded"})
    h = health(fault_server, model=None)
    assert h.mode == "error" and h.details.error and h.details.error.code == ErrorCode.MODEL_NOT_LOADED
    fault_server.as_lm_studio(v0={"phi-3": "loaded"})
    assert health(fault_server, model=None).mode == "lm_ready"


def test_health_ignores_embedding_models(fault_server: FaultServer) -> None:
    from tests.servers.fault_server import lm_models_v0

    fault_server.script("GET /api/v0/models", json_reply(lm_models_v0({MODEL: "loaded"}, embeddings=("nomic-embed",))))
    h = health(fault_server)
    assert h.ok and h.details.available_models == [MODEL]


def test_health_connection_refused_is_lm_off(closed_port: int) -> None:
    h = lm_studio_health(base_url=f"http://127.0.0.1:{closed_port}/v1", model=MODEL)
    assert not h.ok and h.mode == "lm_off"
    assert h.details.error and h.details.error.code == ErrorCode.CONNECTION_REFUSED


def test_health_hung_server_is_an_error_within_budget(fault_server: FaultServer) -> None:
    fault_server.script("GET /api/v1/models", hang())
    h = health(fault_server, budget_seconds=0.5)
    assert not h.ok and h.mode == "error"
    assert h.details.error and h.details.error.code == ErrorCode.TIMEOUT
    # A hung server ends the check: no further probe waits on it (the health endpoint and the greeting
    # answered 404 first).
    assert [r.path for r in fault_server.requests] == ["/health", "/lmstudio-greeting", "/api/v1/models"]


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (unauthorized(), ErrorCode.UNAUTHORIZED),
        (raw_reply(b'{"data": [{"id": '), ErrorCode.BAD_RESPONSE),
        (server_error(), ErrorCode.SERVER_ERROR),
        (truncated({"data": [{"id": MODEL, "state": "loaded"}]}), ErrorCode.TRUNCATED),
    ],
    ids=["401", "malformed", "500", "truncated"],
)
def test_health_faults(fault_server: FaultServer, reply: Reply, code: ErrorCode) -> None:
    for route in ("GET /api/v1/models", "GET /api/v0/models", "GET /v1/models"):
        fault_server.script(route, reply)
    h = health(fault_server)
    assert not h.ok and h.mode == "error"
    assert h.details.error is not None and h.details.error.code == code, h.details.error


def test_health_reads_the_body_not_the_status(fault_server: FaultServer) -> None:
    # LM Studio answers routes it lacks with 200 + an error body: that is no model list.
    for route in ("GET /api/v1/models", "GET /api/v0/models", "GET /v1/models"):
        fault_server.script(route, unknown_route(*route.split(" ")))
    h = health(fault_server)
    assert h.mode == "error" and h.details.error and h.details.error.code == ErrorCode.BAD_RESPONSE


def test_health_sends_the_token_with_every_request_and_one_tiny_structured_check(
    fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemantria_dag.settings import reset_settings_cache

    monkeypatch.setenv("LM_STUDIO_API_TOKEN", "lm-test-TOKEN-7777")
    reset_settings_cache()
    fault_server.as_lm_studio(v1={MODEL: True})
    lm = lm_at(fault_server.base_url)
    assert lm.health().ok
    lm.close()
    assert fault_server.requests
    assert all(r.headers["authorization"] == "Bearer lm-test-TOKEN-7777" for r in fault_server.requests)
    # Besides the GET probes, at most the structured-output check: one request of at most 24 tokens.
    posts = [r for r in fault_server.requests if r.method == "POST"]
    assert len(posts) <= 1 and all(r.json()["max_tokens"] <= 24 for r in posts)
