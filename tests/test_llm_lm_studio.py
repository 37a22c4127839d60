"""The LM Studio resource against a real llama.cpp engine (SmolLM2-135M on loopback).

LM Studio runs models with llama.cpp behind an OpenAI-compatible API; llama.cpp's own
`llama-server` is that engine. Answers are real (tiny-model noise), so the tests assert structure
and bookkeeping, never meaning.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from dagster import asset, materialize

from gemantria_dag.llm.results import CompletionResult, ErrorCode
from resources.llm.lm_studio import LMStudioResource
from tests.fixtures.llm import LlamaServer

# A bounded answer: the grammar llama-server builds from the schema ends the object within max_tokens,
# so a structured call finishes ("stop") instead of being cut (`truncated`).
WORD_MAX = 16
SCHEMA = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": WORD_MAX}},
    "required": ["word"],
    "additionalProperties": False,
}


@pytest.fixture
def lm(llama_server: LlamaServer) -> LMStudioResource:
    resource = LMStudioResource(base_url=llama_server.base_url, model=llama_server.model)
    yield resource
    resource.close()


def assert_real_answer(result: CompletionResult, model: str) -> None:
    assert result.ok, result.error
    assert result.error is None
    assert result.response and result.response.strip()
    meta = result.metadata
    assert meta.backend == "lm_studio"
    assert meta.model == model and meta.requested_model == model
    assert meta.completion_tokens and meta.completion_tokens > 0
    assert meta.tokens_per_second and meta.tokens_per_second > 0
    assert meta.latency_ms > 0
    assert meta.finish_reason in ("stop", "length")
    assert meta.attempts == 1


def test_complete_prompt_real_answer(lm: LMStudioResource, llama_server: LlamaServer) -> None:
    result = lm.complete("Name one fruit.", max_tokens=16, temperature=0.0)
    assert_real_answer(result, llama_server.model)
    assert result.metadata.prompt_tokens and result.metadata.prompt_tokens > 0
    assert result.metadata.completion_tokens <= 16
    # Not streamed, and only LM Studio's `stats` are read as server timing (llama-server's own
    # `timings` are not): no time to first token.
    assert result.metadata.ttft_ms is None


def test_complete_messages_and_max_tokens_cut(lm: LMStudioResource, llama_server: LlamaServer) -> None:
    result = lm.complete(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Write a long story about a king."},
        ],
        max_tokens=4,
        temperature=0.0,
    )
    assert_real_answer(result, llama_server.model)
    assert result.metadata.finish_reason == "length"
    assert result.metadata.completion_tokens == 4


def test_stream_gives_time_to_first_token(lm: LMStudioResource, llama_server: LlamaServer) -> None:
    result = lm.complete("Say hello.", max_tokens=12, stream=True)
    assert_real_answer(result, llama_server.model)
    assert result.metadata.ttft_ms is not None and 0 < result.metadata.ttft_ms <= result.metadata.latency_ms


def test_async_calls_share_one_pool(lm: LMStudioResource, llama_server: LlamaServer) -> None:
    async def run() -> list[CompletionResult]:
        try:
            return await asyncio.gather(
                *(lm.acomplete(f"Count to {n}.", max_tokens=8) for n in range(4)),
                lm.acomplete("Say hi.", max_tokens=8, stream=True),
            )
        finally:
            await lm.aclose()

    results = asyncio.run(run())
    for result in results:
        assert_real_answer(result, llama_server.model)


def test_threads_share_one_client(lm: LMStudioResource, llama_server: LlamaServer) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: lm.complete(f"Number {n}?", max_tokens=6), range(6)))
    for result in results:
        assert_real_answer(result, llama_server.model)
    assert lm.pools.open_count[0] == 1  # one lazily created client served every thread


def assert_word_json(result: CompletionResult, form: str) -> None:
    """A whole, schema-shaped answer in one attempt, in the given wire form."""
    assert result.ok, result.error
    meta = result.metadata
    assert meta.attempts == 1 and meta.response_format_type == form
    assert meta.finish_reason == "stop"
    word = json.loads(result.response or "")["word"]
    # The schema's maxLength holds: the server constrained the output with it, not just asked for JSON.
    assert isinstance(word, str) and len(word) <= WORD_MAX


def test_structured_output_json_schema_taken_at_once(lm: LMStudioResource) -> None:
    # llama-server takes OpenAI's json_schema form, so there is no fallback: the first form works and is
    # remembered. (The fallback to json_object for a server that refuses json_schema is covered against
    # the fault server: test_llm_faults.py::test_structured_output_learns_each_servers_form.)
    fmt = {"type": "json_schema", "json_schema": {"name": "word", "schema": SCHEMA}}
    first = lm.complete("Give one Hebrew word as JSON.", max_tokens=96, response_format=fmt, temperature=0.0)
    assert_word_json(first, "json_schema")
    assert lm.learned_structured_form == "json_schema"
    second = lm.complete("Give one Hebrew word as JSON.", max_tokens=96, response_format=fmt, temperature=0.0)
    assert_word_json(second, "json_schema")


def test_structured_output_cut_by_max_tokens_is_truncated(lm: LMStudioResource) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "word", "schema": SCHEMA}}
    result = lm.complete("Give one Hebrew word as JSON.", max_tokens=3, response_format=fmt, temperature=0.0)
    # Three tokens cannot close the object: cut JSON is no answer, and the same budget would cut it again.
    assert not result.ok and result.response is None
    assert result.error is not None and result.error.code == ErrorCode.TRUNCATED and not result.error.retryable
    assert result.metadata.attempts == 1 and result.metadata.finish_reason == "length"
    assert result.metadata.completion_tokens == 3
    assert lm.learned_structured_form is None  # a cut answer teaches nothing about the form


def test_pinned_json_object_needs_no_fallback(llama_server: LlamaServer) -> None:
    lm = LMStudioResource(base_url=llama_server.base_url, model=llama_server.model, structured_output="json_object")
    try:
        result = lm.complete(
            "JSON please.", max_tokens=96, response_format={"type": "json_object", "schema": SCHEMA}, temperature=0.0
        )
    finally:
        lm.close()
    # llama-server also takes the llama.cpp form, json_object with a schema, and applies the schema.
    assert_word_json(result, "json_object")
    assert lm.learned_structured_form is None  # pinned: nothing to learn


def test_health_ready_on_a_plain_openai_server(lm: LMStudioResource, llama_server: LlamaServer) -> None:
    health = lm.health()
    assert health.ok and health.mode == "lm_ready"
    d = health.details
    # llama.cpp has no LM Studio native API: /api/v1 and /api/v0 answer 404, /v1/models decides.
    assert d.probe == "/v1/models" and d.server_kind == "openai_compatible"
    assert d.available_models == [llama_server.model]
    assert d.model_present is True and d.model_loaded is None
    assert d.error is None and d.latency_ms > 0 and d.base_url == llama_server.base_url
    # llama-server takes json_schema: health's one structured-output check passes.
    assert d.structured_output == "ok" and d.structured_output_check is not None


def test_health_unknown_model(llama_server: LlamaServer) -> None:
    lm = LMStudioResource(base_url=llama_server.base_url, model="qwen2.5-7b-instruct")
    health = lm.health()
    lm.close()
    assert not health.ok and health.mode == "error"
    assert health.details.error and health.details.error.code == ErrorCode.MODEL_NOT_FOUND
    assert health.details.model_present is False and health.details.available_models == [llama_server.model]


def test_from_settings(monkeypatch: pytest.MonkeyPatch, llama_server: LlamaServer) -> None:
    from gemantria_dag.settings import get_settings, reset_settings_cache

    monkeypatch.setenv("LM_STUDIO_BASE_URL", llama_server.base_url)
    monkeypatch.setenv("LM_STUDIO_MODEL", llama_server.model)
    monkeypatch.setenv("LM_STUDIO_TIMEOUT_SECONDS", "12")
    monkeypatch.setenv("LM_STUDIO_MAX_CONCURRENCY", "3")
    reset_settings_cache()
    lm = LMStudioResource.from_settings(get_settings())
    assert (lm.base_url, lm.model, lm.timeout_seconds, lm.max_connections) == (
        llama_server.base_url,
        llama_server.model,
        12.0,
        3,
    )
    assert lm.health().mode == "lm_ready"
    lm.close()


def test_as_a_dagster_resource(llama_server: LlamaServer) -> None:
    seen: dict[str, object] = {}

    @asset
    def greeting(context, llm: LMStudioResource) -> str:  # noqa: ANN001 - dagster checks the hint by identity
        result = llm.complete("Say hello.", max_tokens=8)
        assert result.ok, result.error
        seen["resource"] = llm
        context.add_output_metadata({"tokens": result.metadata.completion_tokens or 0})
        return result.response or ""

    outcome = materialize(
        [greeting], resources={"llm": LMStudioResource(base_url=llama_server.base_url, model=llama_server.model)}
    )
    assert outcome.success
    assert outcome.output_for_node("greeting")
    # teardown_after_execution closed the run's client.
    assert seen["resource"].pools.open_count == (0, 0)  # type: ignore[attr-defined]
