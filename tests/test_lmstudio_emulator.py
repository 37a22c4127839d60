"""The LM Studio emulator over real sockets, with real generation (SmolLM2 on llama.cpp) behind it.

Plain httpx, not the project's client: these tests pin what the emulator says, so that the client's
tests against it stand on LM Studio's documented behaviour.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.lmstudio import LMStudioEmulator

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def http(lmstudio: LMStudioEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lmstudio.root_url, timeout=60) as client:
        yield client


def chat(
    http: httpx.Client, model: str | None, *, path: str = "/v1/chat/completions", max_tokens: int = 6, **extra
) -> httpx.Response:
    body = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0, **extra}
    if model is not None:
        body["model"] = model
    return http.post(path, json=body)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def v1_native(http: httpx.Client) -> dict[str, dict]:
    response = http.get("/api/v1/models")
    assert response.status_code == 200
    return {m["key"]: m for m in response.json()["models"]}


def v0_states(http: httpx.Client) -> dict[str, str]:
    response = http.get("/api/v0/models")
    assert response.status_code == 200
    return {m["id"]: m["state"] for m in response.json()["data"]}


# -- greeting, unknown routes, listings ------------------------------------------------------------
def test_greeting_and_unknown_routes_answer_200(http: httpx.Client) -> None:
    greeting = http.get("/lmstudio-greeting")
    assert greeting.status_code == 200 and greeting.json() == {"lmstudio": True}
    health = http.get("/health")
    assert health.status_code == 200
    assert health.json() == {"error": "Unexpected endpoint or method. (GET /health)"}
    wrong_method = http.get("/v1/chat/completions")
    assert wrong_method.status_code == 200 and "error" in wrong_method.json()


def test_listings_with_the_configured_model_loaded(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    models = v1_native(http)
    assert set(models) == {lmstudio.model, lmstudio.other_model, lmstudio.third_model, lmstudio.embedding_model}
    primary = models[lmstudio.model]
    for field in (
        "type",
        "publisher",
        "key",
        "display_name",
        "architecture",
        "quantization",
        "size_bytes",
        "params_string",
        "loaded_instances",
        "max_context_length",
        "format",
        "capabilities",
    ):
        assert field in primary, field
    assert primary["type"] == "llm" and primary["format"] == "gguf"
    assert set(primary["quantization"]) == {"name", "bits_per_weight"}
    assert [i["id"] for i in primary["loaded_instances"]] == [lmstudio.model]
    assert primary["loaded_instances"][0]["config"]["context_length"] > 0
    assert set(primary["capabilities"]) == {"vision", "trained_for_tool_use"}
    assert models[lmstudio.other_model]["loaded_instances"] == []
    assert models[lmstudio.embedding_model]["type"] == "embedding"

    legacy = http.get("/api/v0/models").json()
    assert legacy["object"] == "list"
    entry = next(m for m in legacy["data"] if m["id"] == lmstudio.model)
    assert {
        "id",
        "object",
        "type",
        "publisher",
        "arch",
        "compatibility_type",
        "quantization",
        "state",
        "max_context_length",
    } <= set(entry)
    assert entry["object"] == "model" and entry["type"] == "llm"
    assert v0_states(http) == {
        lmstudio.model: "loaded",
        lmstudio.other_model: "not-loaded",
        lmstudio.third_model: "not-loaded",
        lmstudio.embedding_model: "not-loaded",
    }
    one = http.get(f"/api/v0/models/{lmstudio.model}")
    assert one.status_code == 200 and one.json()["state"] == "loaded"

    # JIT loading is on: /v1/models lists every downloaded model, so it cannot tell "loaded".
    openai = http.get("/v1/models").json()
    assert openai["object"] == "list"
    assert {m["id"] for m in openai["data"]} == set(models)


def test_listings_downloaded_and_none_loaded(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded")
    assert all(m["loaded_instances"] == [] for m in v1_native(http).values())
    assert set(v0_states(http).values()) == {"not-loaded"}
    assert len(http.get("/v1/models").json()["data"]) == 4  # JIT on: still every downloaded model

    lmstudio.scenario("none_loaded")  # JIT off: /v1/models lists only what is loaded
    assert set(v0_states(http).values()) == {"not-loaded"}
    assert http.get("/v1/models").json()["data"] == []


def test_load_and_unload_change_the_state(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded", jit_load_seconds=0.3)
    loaded = http.post("/api/v1/models/load", json={"model": lmstudio.model, "config": {"context_length": 1024}})
    assert loaded.status_code == 200
    body = loaded.json()
    assert body["model_instance_id"] == lmstudio.model
    assert body["config"]["context_length"] == 1024
    assert body["load_time_seconds"] >= 0.3
    assert v0_states(http)[lmstudio.model] == "loaded"
    instance = v1_native(http)[lmstudio.model]["loaded_instances"][0]
    assert (instance["id"], instance["config"]["context_length"]) == (lmstudio.model, 1024)

    unloaded = http.post("/api/v1/models/unload", json={"instance_id": lmstudio.model})
    assert unloaded.status_code == 200 and unloaded.json() == {"instance_id": lmstudio.model}
    assert v0_states(http)[lmstudio.model] == "not-loaded"

    assert http.post("/api/v1/models/unload", json={"instance_id": lmstudio.model}).status_code == 404
    missing = http.post("/api/v1/models/load", json={"model": "no-such-model"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    stats = lmstudio.stats()
    assert (stats["api_loads"], stats["unloads"]) == (1, 1)


# -- API token ---------------------------------------------------------------------------------------
def test_token_required_on_every_route_but_the_greeting(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.set(token="lm-test-token")
    for method, path in [
        ("GET", "/api/v1/models"),
        ("GET", "/api/v0/models"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/health"),
    ]:
        response = http.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, path
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["message"].startswith("An LM Studio API token is required")
    wrong = http.get("/api/v1/models", headers={"Authorization": "Bearer not-it"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert http.get("/lmstudio-greeting").json() == {"lmstudio": True}

    auth = {"Authorization": "Bearer lm-test-token"}
    assert http.get("/api/v1/models", headers=auth).status_code == 200
    answer = http.post(
        "/v1/chat/completions", headers=auth, json={"model": lmstudio.model, "messages": MESSAGES, "max_tokens": 4}
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert lmstudio.stats()["unauthorized"] == 6


# -- just-in-time loading and substitution ------------------------------------------------------------
def test_jit_load_waits_then_the_model_counts_as_loaded(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded", jit_load_seconds=1.5)
    started = time.monotonic()
    first = chat(http, lmstudio.model)
    took = time.monotonic() - started
    assert first.status_code == 200, first.text
    assert took >= 1.5
    assert first.json()["model"] == lmstudio.model
    assert v0_states(http)[lmstudio.model] == "loaded"
    assert [i["id"] for i in v1_native(http)[lmstudio.model]["loaded_instances"]] == [lmstudio.model]

    started = time.monotonic()
    assert chat(http, lmstudio.model).status_code == 200
    assert time.monotonic() - started < 1.5
    assert lmstudio.stats()["jit_loads"] == 1


def test_concurrent_first_calls_share_one_jit_load(lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded", jit_load_seconds=0.5)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=lmstudio.root_url, timeout=60) as client:
            body = {"model": lmstudio.model, "messages": MESSAGES, "max_tokens": 4}
            return await asyncio.gather(*[client.post("/v1/chat/completions", json=body) for _ in range(3)])

    assert [r.status_code for r in asyncio.run(burst())] == [200, 200, 200]
    assert lmstudio.stats()["jit_loads"] == 1


def test_jit_load_of_another_model_evicts_the_earlier_jit_load(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded", jit_load_seconds=0.2)
    assert chat(http, lmstudio.model).json()["model"] == lmstudio.model
    assert chat(http, lmstudio.other_model).json()["model"] == lmstudio.other_model
    states = v0_states(http)
    assert (states[lmstudio.model], states[lmstudio.other_model]) == ("not-loaded", "loaded")
    assert lmstudio.stats()["evictions"] == 1


def test_one_model_loaded_answers_for_another(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("one_other_loaded")
    answer = chat(http, lmstudio.model)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == lmstudio.other_model  # not the requested one, nor the upstream's alias
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    assert v0_states(http)[lmstudio.model] == "not-loaded"  # JIT is off: nothing was loaded
    assert lmstudio.stats()["substitutions"] == 1


def test_unknown_name_with_one_loaded_is_substituted_even_with_jit(
    http: httpx.Client, lmstudio: LMStudioEmulator
) -> None:
    answer = chat(http, "any-model-name")
    assert answer.status_code == 200 and answer.json()["model"] == lmstudio.model
    own = chat(http, lmstudio.model)
    assert own.json()["model"] == lmstudio.model
    assert lmstudio.stats()["substitutions"] == 1


def test_two_loaded_honour_the_name(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("two_loaded")
    assert chat(http, lmstudio.other_model).json()["model"] == lmstudio.other_model
    assert chat(http, lmstudio.model).json()["model"] == lmstudio.model
    assert chat(http, "any-model-name").status_code == 404
    assert lmstudio.stats()["substitutions"] == 0


# -- error shapes --------------------------------------------------------------------------------------
def test_nothing_loaded_without_jit(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("none_loaded")
    answer = chat(http, lmstudio.model)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert isinstance(error, dict)
    assert error["message"].startswith("No models loaded")
    assert error["type"] == "invalid_request_error"
    lmstudio.set(no_models_status=404)  # LM Studio 0.3.5
    assert chat(http, lmstudio.model).status_code == 404
    assert lmstudio.stats()["predictions"] == 0


def test_unknown_model(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded")
    answer = chat(http, "no-such-model")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert error["message"].startswith('Model "no-such-model" not found')
    assert lmstudio.model in error["message"]


def test_crashed_model_answers_a_plain_string(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    lmstudio.set(crashed=True)
    answer = chat(http, lmstudio.model)
    assert answer.status_code == 400
    assert answer.json() == {"error": "The model has crashed without additional information. (Exit code: null)"}
    lmstudio.set(crashed=False)
    assert chat(http, lmstudio.model).status_code == 200


def test_embedding_model_cannot_chat(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    answer = chat(http, lmstudio.embedding_model)
    assert answer.status_code == 400 and isinstance(answer.json()["error"], str)


# -- structured output ---------------------------------------------------------------------------------
def test_json_object_is_rejected(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    answer = chat(http, lmstudio.model, response_format={"type": "json_object"})
    assert answer.status_code == 400
    assert answer.json() == {"error": "'response_format.type' must be 'json_schema' or 'text'"}
    assert lmstudio.stats()["predictions"] == 0


def test_json_schema_is_accepted_and_enforced(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    answer = chat(
        http,
        lmstudio.model,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}},
    )
    assert answer.status_code == 200, answer.text
    content = json.loads(answer.json()["choices"][0]["message"]["content"])
    assert isinstance(content, dict) and isinstance(content["ok"], bool)

    no_schema = chat(http, lmstudio.model, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert no_schema.status_code == 400
    assert chat(http, lmstudio.model, response_format={"type": "text"}).status_code == 200


# -- /api/v0 stats -----------------------------------------------------------------------------------------
def test_v0_chat_completions_add_stats(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    answer = chat(http, lmstudio.model, path="/api/v0/chat/completions", max_tokens=8)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == lmstudio.model
    stats = body["stats"]
    assert set(stats) == {"tokens_per_second", "time_to_first_token", "generation_time", "stop_reason"}
    assert stats["tokens_per_second"] > 0 and stats["generation_time"] > 0 and stats["time_to_first_token"] > 0
    assert stats["stop_reason"] in {"eosFound", "maxPredictedTokensReached"}
    assert body["usage"]["completion_tokens"] <= 8 and body["usage"]["prompt_tokens"] > 0
    assert set(body["model_info"]) == {"arch", "quant", "format", "context_length"}
    assert set(body["runtime"]) == {"name", "version", "supported_formats"}

    plain = chat(http, lmstudio.model).json()
    assert "stats" not in plain
    assert "timings" not in body and "timings" not in plain  # llama-server's own field: LM Studio sends none

    text = http.post("/api/v0/completions", json={"model": lmstudio.model, "prompt": "The sky is", "max_tokens": 4})
    assert text.status_code == 200 and text.json()["object"] == "text_completion" and "stats" in text.json()


# -- streaming ---------------------------------------------------------------------------------------------
def test_streaming(http: httpx.Client, lmstudio: LMStudioEmulator) -> None:
    body = {
        "model": lmstudio.model,
        "messages": MESSAGES,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {lmstudio.model}
    assert len({c["id"] for c in chunks}) == 1
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes == ["length"]
    content_chunks = [ch for c in chunks for ch in c["choices"] if ch.get("delta", {}).get("content")]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    # The engine's own count: cut at max_tokens, so exactly 6, however many chunks they made (a
    # character of several tokens comes in one chunk).
    assert usage["completion_tokens"] == 6 and usage["total_tokens"] == usage["prompt_tokens"] + 6
    assert 0 < len(content_chunks) <= 6 and usage["prompt_tokens"] > 0
    assert not any("timings" in c for c in chunks)  # llama-server's own field: LM Studio sends none


@pytest.mark.parametrize("mode", ["eof", "done", "abort"])
def test_stream_cut_before_its_finish_reason(http: httpx.Client, lmstudio: LMStudioEmulator, mode: str) -> None:
    lmstudio.set(cut_stream_after_chunks=2, cut_stream_mode=mode, cut_stream_times=1)
    body = {"model": lmstudio.model, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    events: list[str] = []
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
    except httpx.RemoteProtocolError:
        assert mode == "abort"
    else:
        assert mode != "abort"
    data = [json.loads(e) for e in events if e != "[DONE]"]
    assert len(data) == 2
    assert not [ch for c in data for ch in c["choices"] if ch.get("finish_reason")]
    assert ("[DONE]" in events) == (mode == "done")
    assert lmstudio.stats()["cut_streams"] == 1

    # cut_stream_times=1: the next stream is whole.
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert any(ch.get("finish_reason") for e in events[:-1] for ch in json.loads(e)["choices"])


# -- parallel predictions ----------------------------------------------------------------------------------
def test_at_most_four_predictions_at_once(lmstudio: LMStudioEmulator) -> None:
    lmstudio.set(upstream_delay_seconds=0.2)  # each prediction holds its slot a little longer

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=lmstudio.root_url, timeout=120) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        "/v1/chat/completions",
                        json={
                            "model": lmstudio.model,
                            "max_tokens": 4,
                            "messages": [{"role": "user", "content": f"Count to {i}."}],
                        },
                    )
                    for i in range(8)
                ]
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.json()["choices"][0]["message"]["content"] is not None for r in responses)
    stats = lmstudio.stats()
    assert stats["predictions"] == 8
    assert stats["max_concurrent_predictions"] == 4
    assert stats["max_queued_predictions"] >= 1
    assert stats["active_predictions"] == 0 and stats["queued_predictions"] == 0


# -- admin -----------------------------------------------------------------------------------------------------
def test_admin_rejects_unknown_settings(lmstudio: LMStudioEmulator) -> None:
    with pytest.raises(AssertionError, match="unknown setting"):
        lmstudio.set(no_such_knob=1)
    with pytest.raises(AssertionError, match="unknown scenario"):
        lmstudio.scenario("no_such_scenario")
    state = lmstudio.state()
    assert state["knobs"]["scenario"] == "loaded"
    assert set(state["scenarios"]) == {"loaded", "downloaded", "none_loaded", "two_loaded", "one_other_loaded"}
