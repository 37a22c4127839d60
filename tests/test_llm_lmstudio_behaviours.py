"""The LM Studio client against LM Studio's real behaviour: the emulator over real sockets, with real
generation (SmolLM2 on llama.cpp) behind it.

One section per behaviour of issue 9 ("The client, right against it"): health reads bodies and says
which server it found, "loaded" comes from LM Studio's native listings, the API token, substitution,
the just-in-time load budget, cut streams, LM Studio's `stats`, the remote's token-free health, and
`pmagent health lm` as an operator runs it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gemantria_dag.llm.lm_studio import NATIVE_CHAT
from gemantria_dag.llm.probe import TOKEN_MISSING_FIX, TOKEN_REFUSED_FIX
from gemantria_dag.llm.results import CompletionResult, ErrorCode, same_model
from gemantria_dag.settings import reset_settings_cache
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource
from tests.fixtures.llm import LlamaServer
from tests.fixtures.lmstudio import LMStudioEmulator
from tests.fixtures.processes import VENV_BIN, cli_env
from tests.fixtures.remote_server import FakeRemote
from tests.servers.fault_server import (
    FaultServer,
    chat_completion,
    json_reply,
    model_not_found,
    unknown_route,
)

TOKEN = "lm-test-TOKEN-31337"
OPENAI_CHAT = "/v1/chat/completions"
# Bounded (maxLength), so that the grammar ends the object well within max_tokens: a structured answer
# cut by max_tokens would be `truncated`, not an answer.
SCHEMA = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 16}},
    "required": ["word"],
    "additionalProperties": False,
}

Caller = Callable[..., CompletionResult]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def make_lm(lmstudio: LMStudioEmulator) -> Iterator[Callable[..., LMStudioResource]]:
    """LM Studio resources pointed at the emulator (the configured model unless told), closed after the test."""
    made: list[LMStudioResource] = []

    def make(**config: Any) -> LMStudioResource:
        config.setdefault("base_url", lmstudio.base_url)
        config.setdefault("model", lmstudio.model)
        resource = LMStudioResource(**config)
        made.append(resource)
        return resource

    yield make
    for resource in made:
        resource.close()


def use_token(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    if token is None:
        monkeypatch.delenv("LM_STUDIO_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("LM_STUDIO_API_TOKEN", token)
    reset_settings_cache()


def completions_asked(lmstudio: LMStudioEmulator) -> int:
    return sum(n for route, n in lmstudio.stats()["requests"].items() if route.startswith("POST "))


# ---------------------------------------------------------------- health reads the body, and says what it found


def test_health_loaded_lm_studio_04(make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator) -> None:
    lm = make_lm()
    h = lm.health()
    assert h.ok and h.mode == "lm_ready", h.details.message
    d = h.details
    assert (d.server_kind, d.probe, d.identified_by) == ("lm_studio", "/api/v1/models", "/lmstudio-greeting")
    assert d.model_present is True and d.model_loaded is True and d.loaded_models == [lmstudio.model]
    # The embedding model is no candidate.
    assert set(d.available_models) == {lmstudio.model, lmstudio.other_model, lmstudio.third_model}
    # /health answered 200, but with LM Studio's error body: read, and not taken for health.
    assert [(s.endpoint, s.status) for s in d.probes] == [
        ("/health", 200),
        ("/lmstudio-greeting", 200),
        ("/api/v1/models", 200),
    ]
    assert d.probes[0].outcome.startswith("error body: Unexpected endpoint")
    assert d.error is None and "LM Studio (0.4 API)" in (d.message or "")
    # One tiny structured-output check (then cached), never a load.
    assert d.structured_output == "ok" and d.structured_output_check is not None
    assert d.structured_output_check["completion_tokens"] <= 24
    stats = lmstudio.stats()
    assert completions_asked(lmstudio) == 1 and stats["loads"] == 0
    again = lm.health().details
    assert again.structured_output == "ok" and again.structured_output_check["cached"] is True
    assert completions_asked(lmstudio) == 1
    assert lm.server_kind == "lm_studio" and lm.profile is not None and lm.profile.source == "health"


def test_health_endpoint_answering_200_with_an_error_is_no_health(lmstudio: LMStudioEmulator) -> None:
    from gemantria_dag.llm.probe import lm_studio_health

    # Nothing but the configured endpoint and the greeting would say "alive": neither does here.
    h = lm_studio_health(base_url=lmstudio.base_url, model=lmstudio.model, health_endpoint="/v1/health")
    assert h.details.probes[0].endpoint == "/v1/health" and h.details.probes[0].status == 200
    assert "error body" in h.details.probes[0].outcome
    assert h.ok and h.details.identified_by == "/lmstudio-greeting"
    assert lmstudio.stats()["errors"].get("unexpected_endpoint") == 1


def test_health_tries_the_configured_endpoint_first(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator
) -> None:
    h = make_lm(health_endpoint="/lmstudio-greeting").health()
    assert h.ok and h.details.identified_by == "/lmstudio-greeting"
    assert [s.endpoint for s in h.details.probes] == ["/lmstudio-greeting", "/api/v1/models"]
    assert "GET /health" not in lmstudio.stats()["requests"]


def test_health_downloaded_but_not_loaded(make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded")
    h = make_lm().health()
    assert not h.ok and h.mode == "error"
    d = h.details
    assert d.error is not None and d.error.code == ErrorCode.MODEL_NOT_LOADED
    assert f"lms load {lmstudio.model}" in d.error.message and d.error.fix == f"lms load {lmstudio.model}"
    assert d.model_present is True and d.model_loaded is False and d.loaded_models == []
    assert d.server_kind == "lm_studio"
    # /v1/models lists every downloaded model while JIT loading is on: it was never asked.
    assert "GET /v1/models" not in lmstudio.stats()["requests"]
    assert lmstudio.stats()["jit_loads"] == 0


def test_health_nothing_loaded(make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("none_loaded")
    h = make_lm().health()
    assert not h.ok and h.mode == "error"
    assert h.details.error is not None and h.details.error.code == ErrorCode.MODEL_NOT_LOADED
    assert "no models loaded" in h.details.error.message
    assert f"lms load {lmstudio.model}" in (h.details.message or "")
    # No model configured: the same code, with what to do.
    h = make_lm(model=None).health()
    assert h.mode == "error" and h.details.error and h.details.error.code == ErrorCode.MODEL_NOT_LOADED
    assert "lms load" in h.details.error.message


def test_health_another_model_loaded(make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("one_other_loaded")
    h = make_lm().health()
    assert h.mode == "error" and h.details.error and h.details.error.code == ErrorCode.MODEL_NOT_LOADED
    assert lmstudio.other_model in h.details.error.message and h.details.loaded_models == [lmstudio.other_model]


def test_health_legacy_lm_studio_when_api_v1_is_missing(fault_server: FaultServer) -> None:
    from gemantria_dag.llm.probe import lm_studio_health

    # An LM Studio 0.3.x: greets, answers /api/v1/models with its 200 error body, lists on /api/v0.
    fault_server.as_lm_studio(v0={"qwen2.5-7b-instruct": "loaded"})
    fault_server.script("GET /lmstudio-greeting", json_reply({"lmstudio": True}))
    h = lm_studio_health(base_url=fault_server.base_url, model="qwen2.5-7b-instruct")
    assert h.ok and (h.details.server_kind, h.details.probe) == ("lm_studio_legacy", "/api/v0/models")
    assert [s.endpoint for s in h.details.probes] == [
        "/health",
        "/lmstudio-greeting",
        "/api/v1/models",
        "/api/v0/models",
    ]


def test_health_plain_llama_cpp_server(llama_server: LlamaServer) -> None:
    lm = LMStudioResource(base_url=llama_server.base_url, model=llama_server.model)
    try:
        h = lm.health()
    finally:
        lm.close()
    assert h.ok and h.mode == "lm_ready"
    d = h.details
    assert (d.server_kind, d.probe, d.identified_by) == ("openai_compatible", "/v1/models", None)
    assert d.model_loaded is None and d.loaded_models is None
    assert [s.endpoint for s in d.probes] == [
        "/health",
        "/lmstudio-greeting",
        "/api/v1/models",
        "/api/v0/models",
        "/v1/models",
    ]
    assert "not LM Studio" in (d.message or "")


# ---------------------------------------------------------------- the API token


def test_token_missing(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    lmstudio.scenario("loaded", token=TOKEN)
    use_token(monkeypatch, None)
    lm = make_lm()
    h = lm.health()
    assert not h.ok and h.mode == "error"
    assert h.details.error is not None and h.details.error.code == ErrorCode.UNAUTHORIZED
    assert h.details.error.fix == TOKEN_MISSING_FIX and TOKEN_MISSING_FIX in h.details.error.message
    assert h.details.server_kind == "lm_studio"  # the greeting needs no token
    result = call(lm, "Say hi.", max_tokens=4)
    assert not result.ok and result.error is not None and result.error.code == ErrorCode.UNAUTHORIZED
    assert TOKEN_MISSING_FIX in result.error.message


def test_token_wrong_is_never_shown(
    make_lm: Callable[..., LMStudioResource],
    lmstudio: LMStudioEmulator,
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    lmstudio.scenario("loaded", token=TOKEN)
    wrong = "lm-wrong-TOKEN-0000"
    use_token(monkeypatch, wrong)
    lm = make_lm()
    h = lm.health()
    assert h.details.error is not None and h.details.error.code == ErrorCode.UNAUTHORIZED
    assert h.details.error.fix == TOKEN_REFUSED_FIX
    result = call(lm, "Say hi.", max_tokens=4)
    assert result.error is not None and result.error.code == ErrorCode.UNAUTHORIZED
    assert TOKEN_REFUSED_FIX in result.error.message
    shown = json.dumps(h.to_json_dict()) + result.model_dump_json() + caplog.text + repr(lm)
    assert wrong not in shown and TOKEN not in shown


def test_token_sent_on_every_request(
    make_lm: Callable[..., LMStudioResource],
    lmstudio: LMStudioEmulator,
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    lmstudio.scenario("loaded", token=TOKEN)
    use_token(monkeypatch, TOKEN)
    lm = make_lm()
    h = lm.health()
    assert h.ok and h.mode == "lm_ready", h.details.message
    results = [call(lm, "Say hi.", max_tokens=4), call(lm, "Say hi.", max_tokens=4, stream=True)]
    assert all(r.ok for r in results), [r.error for r in results]
    stats = lmstudio.stats()
    # Every request carried the token: the health endpoint, the listings and both completions.
    assert stats["unauthorized"] == 0 and stats["requests"]["GET /health"] == 1
    shown = json.dumps(h.to_json_dict()) + "".join(r.model_dump_json() for r in results) + caplog.text + repr(lm)
    assert TOKEN not in shown
    assert not any("token" in name for name in LMStudioResource.model_fields)


# ---------------------------------------------------------------- substitution


def test_substitution_is_recorded(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    lmstudio.scenario("one_other_loaded")
    lm = make_lm()
    result = call(lm, "Name a colour.", max_tokens=6)
    assert result.ok, result.error
    meta = result.metadata
    assert (meta.requested_model, meta.model) == (lmstudio.model, lmstudio.other_model)
    assert meta.model_substituted is True
    assert result.metadata.model_dump(mode="json")["model_substituted"] is True
    assert lmstudio.stats()["substitutions"] == 1
    assert "substitution" in caplog.text


def test_no_substitution_when_the_model_answers_itself(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller
) -> None:
    lmstudio.scenario("two_loaded")
    for model in (lmstudio.model, lmstudio.other_model):
        result = call(make_lm(), "Name a colour.", model=model, max_tokens=6)
        assert result.ok and result.metadata.model == model and not result.metadata.model_substituted
    assert lmstudio.stats()["substitutions"] == 0


def test_a_further_instance_of_the_same_model_is_no_substitution() -> None:
    assert same_model("qwen2.5-7b-instruct", "qwen2.5-7b-instruct:2")
    assert not same_model("qwen2.5-7b-instruct", "qwen2.5-7b-instruct-q8")
    assert not same_model("llama3:8b", "llama3:70b")


# ---------------------------------------------------------------- just-in-time loading has its own budget


@pytest.mark.parametrize("learned_from", ["health", "first probe"])
def test_first_call_survives_a_jit_load(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller, learned_from: str
) -> None:
    # The model is downloaded, not loaded: the first call makes LM Studio load it (2.5 s here,
    # 10-25 s for real), longer than the per-call timeout (1 s) but within the load budget (10 s).
    lmstudio.scenario("downloaded", jit_load_seconds=2.5)
    lm = make_lm(timeout_seconds=1.0, load_timeout_seconds=10.0)
    if learned_from == "health":
        assert lm.health().details.model_loaded is False
    first = call(lm, "Say hello.", max_tokens=6)
    assert first.ok, first.error
    assert first.metadata.load_budget_used is True and first.metadata.latency_ms >= 2500
    assert first.metadata.model == lmstudio.model and first.metadata.attempts == 1
    assert lm.profile is not None and lm.profile.source == ("health" if learned_from == "health" else "probe")
    # Loaded now: the next call is back on the per-call timeout.
    second = call(lm, "Say hello again.", max_tokens=6)
    assert second.ok and second.metadata.load_budget_used is False
    assert lmstudio.stats()["jit_loads"] == 1


def test_without_a_load_budget_the_first_call_times_out(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator
) -> None:
    lmstudio.scenario("downloaded", jit_load_seconds=2.0)
    lm = make_lm(timeout_seconds=1.0, load_timeout_seconds=1.0)
    result = lm.complete("Say hello.", max_tokens=6)
    assert not result.ok and result.error is not None and result.error.code == ErrorCode.TIMEOUT
    assert result.metadata.load_budget_used is False


def test_a_loaded_model_keeps_the_per_call_timeout(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator
) -> None:
    lm = make_lm(timeout_seconds=20.0, load_timeout_seconds=60.0)
    result = lm.complete("Say hello.", max_tokens=6)
    assert result.ok and result.metadata.load_budget_used is False
    assert lm.profile is not None and lm.profile.loaded is not None and lmstudio.model in lm.profile.loaded


def test_budgets_and_health_endpoint_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LM_STUDIO_TIMEOUT_SECONDS", "12")
    monkeypatch.setenv("LM_STUDIO_LOAD_TIMEOUT_SECONDS", "45")
    monkeypatch.setenv("LM_STUDIO_HEALTH_ENDPOINT", "/lmstudio-greeting")
    reset_settings_cache()
    lm = LMStudioResource.from_settings()
    assert (lm.timeout_seconds, lm.load_timeout_seconds, lm.health_endpoint) == (12.0, 45.0, "/lmstudio-greeting")
    assert LMStudioResource().load_timeout_seconds == 60.0


# ---------------------------------------------------------------- a cut stream is an error


@pytest.mark.parametrize("mode", ["eof", "done", "abort"])
def test_stream_cut_before_its_finish_reason_is_truncated(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller, mode: str
) -> None:
    lmstudio.scenario("loaded", cut_stream_after_chunks=2, cut_stream_mode=mode)
    result = call(make_lm(), "Tell a long story about a king.", max_tokens=24, stream=True)
    assert not result.ok and result.response is None
    assert result.error is not None and result.error.code == ErrorCode.TRUNCATED, result.error
    assert lmstudio.stats()["cut_streams"] == 1


def test_whole_stream_has_client_timings(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller
) -> None:
    result = call(make_lm(), "Say hello.", max_tokens=8, stream=True)
    assert result.ok, result.error
    meta = result.metadata
    assert meta.endpoint == OPENAI_CHAT and meta.timing_source == "client"
    assert meta.ttft_ms is not None and meta.ttft_ms > 0 and meta.finish_reason in ("stop", "length")
    assert meta.completion_tokens and meta.prompt_tokens and meta.generation_ms is not None


# ---------------------------------------------------------------- LM Studio's stats fill the metadata


def test_native_chat_stats_fill_the_metadata(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller
) -> None:
    lm = make_lm()
    result = call(lm, "Name one fruit.", max_tokens=8, temperature=0.0)
    assert result.ok, result.error
    meta = result.metadata
    assert meta.endpoint == NATIVE_CHAT and meta.timing_source == "server"
    assert meta.ttft_ms is not None and meta.ttft_ms > 0
    assert meta.tokens_per_second and meta.tokens_per_second > 0
    assert meta.generation_ms is not None and meta.generation_ms > 0
    assert meta.finish_reason in ("stop", "length") and meta.completion_tokens and meta.completion_tokens <= 8
    assert lmstudio.stats()["requests"].get(f"POST {NATIVE_CHAT}") == 1
    assert lm.uses_native_chat


def test_native_chat_takes_structured_output(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "word", "schema": SCHEMA}}
    result = make_lm().complete("Give one Hebrew word as JSON.", max_tokens=96, response_format=fmt, temperature=0.0)
    # LM Studio takes json_schema at once (it would refuse json_object).
    assert result.ok, result.error
    assert result.metadata.attempts == 1 and result.metadata.response_format_type == "json_schema"
    assert result.metadata.endpoint == NATIVE_CHAT and result.metadata.finish_reason == "stop"
    word = json.loads(result.response or "")["word"]
    assert isinstance(word, str) and len(word) <= 16  # the schema reached the engine


def test_other_servers_get_client_timings(llama_server: LlamaServer) -> None:
    lm = LMStudioResource(base_url=llama_server.base_url, model=llama_server.model)
    try:
        result = lm.complete("Name one fruit.", max_tokens=8)
    finally:
        lm.close()
    assert result.ok and result.metadata.endpoint == OPENAI_CHAT and result.metadata.timing_source == "client"
    assert result.metadata.ttft_ms is None and result.metadata.tokens_per_second
    assert lm.server_kind == "openai_compatible" and not lm.uses_native_chat


@pytest.mark.parametrize(
    "missing",
    [unknown_route("POST", NATIVE_CHAT), json_reply({"detail": "Not Found"}, status=404)],
    ids=["200 Unexpected endpoint", "404"],
)
def test_native_chat_missing_falls_back_once_and_remembers(
    fault_server: FaultServer, call: Caller, missing: Any
) -> None:
    model = "qwen2.5-7b-instruct"
    fault_server.as_lm_studio(v1={model: True})
    fault_server.script(f"POST {NATIVE_CHAT}", missing)
    fault_server.script(f"POST {OPENAI_CHAT}", json_reply(chat_completion("ok", model=model)))
    lm = LMStudioResource(base_url=fault_server.base_url, model=model)
    try:
        first = call(lm, "hello")
        second = call(lm, "hello")
    finally:
        lm.close()
    assert first.ok and first.metadata.endpoint == OPENAI_CHAT and first.metadata.attempts == 2
    assert second.ok and second.metadata.attempts == 1
    assert len(fault_server.requests_to(f"POST {NATIVE_CHAT}")) == 1
    assert len(fault_server.requests_to(f"POST {OPENAI_CHAT}")) == 2
    assert not lm.uses_native_chat


def test_native_chat_model_not_found_is_no_fallback(fault_server: FaultServer) -> None:
    model = "qwen2.5-7b-instruct"
    fault_server.as_lm_studio(v1={model: True})
    fault_server.script(f"POST {NATIVE_CHAT}", model_not_found(model))
    lm = LMStudioResource(base_url=fault_server.base_url, model=model)
    try:
        result = lm.complete("hello")
    finally:
        lm.close()
    assert result.error is not None and result.error.code == ErrorCode.MODEL_NOT_FOUND
    assert fault_server.requests_to(f"POST {OPENAI_CHAT}") == [] and lm.uses_native_chat


# ---------------------------------------------------------------- LM Studio's error shapes


def test_completion_with_nothing_loaded(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller
) -> None:
    lmstudio.scenario("none_loaded")
    result = call(make_lm(), "hello", max_tokens=4)
    assert result.error is not None and result.error.code == ErrorCode.MODEL_NOT_LOADED
    assert result.error.fix == f"lms load {lmstudio.model}" and f"lms load {lmstudio.model}" in result.error.message


def test_completion_for_an_unknown_model(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller
) -> None:
    lmstudio.scenario("two_loaded")
    result = call(make_lm(model="no-such-model"), "hello", max_tokens=4)
    assert result.error is not None and result.error.code == ErrorCode.MODEL_NOT_FOUND


def test_completion_from_a_crashed_model(
    make_lm: Callable[..., LMStudioResource], lmstudio: LMStudioEmulator, call: Caller
) -> None:
    lmstudio.scenario("loaded", crashed=True)
    result = call(make_lm(), "hello", max_tokens=4)
    assert result.error is not None and result.error.code == ErrorCode.SERVER_ERROR
    assert "crashed" in result.error.message


# ---------------------------------------------------------------- the remote's health spends nothing


def test_remote_health_lists_models_and_never_spends_a_completion(remote_env: FakeRemote) -> None:
    before = remote_env.chat_calls()
    remote = RemoteLLMResource.from_settings()
    try:
        for _ in range(3):
            h = remote.health()
            assert h.ok and h.mode == "remote_ready" and h.details.probe == "/v1/models"
    finally:
        remote.close()
    assert remote_env.chat_calls() == before


def test_remote_health_against_lm_studio_spends_nothing(
    lmstudio: LMStudioEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "sk-remote-test-1111")
    reset_settings_cache()
    remote = RemoteLLMResource(base_url=lmstudio.base_url, model=lmstudio.model)
    try:
        assert remote.health().ok
    finally:
        remote.close()
    stats = lmstudio.stats()
    assert stats["requests"] == {"GET /v1/models": 1} and stats["predictions"] == 0 and stats["loads"] == 0


# ---------------------------------------------------------------- `pmagent health lm`, as an operator runs it


def pmagent_health(tmp_path: Path, base_url: str, model: str, *extra: str, **env: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "pmagent"), "health", "lm", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(LM_STUDIO_BASE_URL=base_url, LM_STUDIO_MODEL=model, **env),
    )
    seconds = time.monotonic() - started
    assert "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout if "--pretty" in extra else json.loads(proc.stdout)
    return proc.returncode, out, seconds


def test_cli_lm_studio_loaded(tmp_path: Path, lmstudio: LMStudioEmulator) -> None:
    code, out, seconds = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model)
    assert code == 0 and out["ok"] is True and out["mode"] == "lm_ready"
    d = out["details"]
    assert d["server_kind"] == "lm_studio" and d["model_loaded"] is True and d["error"] is None
    assert seconds < 5


def test_cli_downloaded_not_loaded(tmp_path: Path, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("downloaded")
    code, out, _ = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model)
    assert code == 1 and out["mode"] == "error" and out["details"]["server_kind"] == "lm_studio"
    error = out["details"]["error"]
    assert error["code"] == "model_not_loaded" and error["fix"] == f"lms load {lmstudio.model}"
    assert f"lms load {lmstudio.model}" in out["details"]["message"]


def test_cli_nothing_loaded(tmp_path: Path, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("none_loaded")
    code, out, _ = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model, "--pretty")
    assert code == 1
    for text in (
        "error",
        "lm_studio (LM Studio 0.4",
        "model_not_loaded",
        "no models loaded",
        f"lms load {lmstudio.model}",
        "loaded models",
        "none",
    ):
        assert text in out, text


def test_cli_token_missing(tmp_path: Path, lmstudio: LMStudioEmulator) -> None:
    lmstudio.scenario("loaded", token=TOKEN)
    code, out, _ = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model)
    assert code == 1 and out["mode"] == "error" and out["details"]["server_kind"] == "lm_studio"
    assert out["details"]["error"]["code"] == "unauthorized"
    assert TOKEN_MISSING_FIX in out["details"]["message"]
    # With the token: ready, and the token is nowhere in what is printed.
    for extra in ((), ("--pretty",)):
        code, out, _ = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model, *extra, LM_STUDIO_API_TOKEN=TOKEN)
        assert code == 0 and TOKEN not in (out if isinstance(out, str) else json.dumps(out))


def test_cli_health_endpoint_200_with_an_error_body(tmp_path: Path, lmstudio: LMStudioEmulator) -> None:
    code, out, _ = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model, LM_STUDIO_HEALTH_ENDPOINT="/health")
    assert code == 0 and out["mode"] == "lm_ready"
    first = out["details"]["probes"][0]
    assert first["endpoint"] == "/health" and first["status"] == 200 and first["outcome"].startswith("error body")
    assert out["details"]["identified_by"] == "/lmstudio-greeting"
    code, text, _ = pmagent_health(tmp_path, lmstudio.base_url, lmstudio.model, "--pretty")
    assert "/health -> 200: error body" in text and "/lmstudio-greeting" in text


def test_cli_plain_llama_cpp_server(tmp_path: Path, llama_server: LlamaServer) -> None:
    code, out, _ = pmagent_health(tmp_path, llama_server.base_url, llama_server.model)
    assert code == 0 and out["mode"] == "lm_ready"
    d = out["details"]
    assert d["server_kind"] == "openai_compatible" and d["probe"] == "/v1/models" and d["model_loaded"] is None
    code, text, _ = pmagent_health(tmp_path, llama_server.base_url, llama_server.model, "--pretty")
    assert "openai_compatible (not LM Studio)" in text and "unknown (the server cannot tell)" in text
