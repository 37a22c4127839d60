"""RFC-080's rules, one row per rule (select_backend is pure: no server needed)."""

from __future__ import annotations

import pytest

from gemantria_dag.llm.results import ErrorCode, HealthDetails, HealthResult, LLMError
from gemantria_dag.routing.decision import select_backend
from gemantria_dag.settings import Settings, load_settings

MODEL = "smollm2-135m"


def lm(
    mode: str = "lm_ready", *, models: tuple[str, ...] = (MODEL,), loaded: bool | None = True, latency_ms: float = 20.0
) -> HealthResult:
    ok = mode == "lm_ready"
    err = None if ok else LLMError(code=ErrorCode.CONNECTION_REFUSED, message="connection refused")
    return HealthResult(
        ok=ok,
        mode=mode,
        details=HealthDetails(
            model=MODEL,
            available_models=list(models),
            model_present=MODEL in models,
            model_loaded=loaded,
            latency_ms=latency_ms,
            error=err,
        ),
    )


def remote(mode: str = "remote_ready") -> HealthResult:
    ok = mode == "remote_ready"
    err = None if ok else LLMError(code=ErrorCode.UNAUTHORIZED, message="401 from remote")
    return HealthResult(ok=ok, mode=mode, details=HealthDetails(model="gpt-x", error=err))


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "lm_studio_model": MODEL,
        "remote_llm_base_url": "http://127.0.0.1:9/v1",
        "remote_llm_model": "gpt-x",
    }
    base.update(kw)
    return load_settings(**base)


CASES = [
    # id, lm health, remote health, settings overrides, expected backend, expected reason fragment
    ("lm ready", lm(), remote(), {}, "lm_studio", "LM Studio ready"),
    ("lm off", lm("lm_off"), remote(), {}, "remote", "lm_off"),
    ("lm error", lm("error"), remote(), {}, "remote", "health is error"),
    ("model missing", lm(models=("other",)), remote(), {}, "remote", "not among the server's models"),
    ("model not loaded", lm(loaded=False), remote(), {}, "remote", "lms load smollm2-135m"),
    ("loaded unknown (plain server)", lm(loaded=None), remote(), {}, "lm_studio", "LM Studio ready"),
    ("model unset", lm(), remote(), {"lm_studio_model": None}, "remote", "LM_STUDIO_MODEL is not set"),
    ("USE_LM_STUDIO=0", lm(), remote(), {"use_lm_studio": False}, "remote", "USE_LM_STUDIO=0"),
    ("slow health", lm(latency_ms=5_000.0), remote(), {}, "remote", "limit 5000 ms"),
    ("just under 5 s", lm(latency_ms=4_999.0), remote(), {}, "lm_studio", "LM Studio ready"),
    ("both down", lm("lm_off"), remote("remote_off"), {}, "none", "remote LLM health is remote_off"),
    ("remote unconfigured", lm("lm_off"), None, {"remote_llm_base_url": None}, "none", "not configured"),
    ("remote error", lm(loaded=False), remote("error"), {}, "none", "remote LLM health is error"),
]


@pytest.mark.parametrize(
    ("lm_health", "remote_health", "overrides", "backend", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_select_backend(
    lm_health: HealthResult, remote_health: HealthResult | None, overrides: dict, backend: str, reason: str
) -> None:
    decision = select_backend(lm_health, remote_health, settings(**overrides))
    assert decision.backend == backend
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.checked_at.tzinfo is not None


def test_none_names_both_backends() -> None:
    decision = select_backend(lm("lm_off"), remote("remote_off"), settings())
    text = " ".join(decision.reasons)
    assert "LM Studio" in text and "remote" in text
    assert decision.model is None


def test_model_follows_the_backend() -> None:
    assert select_backend(lm(), remote(), settings()).model == MODEL
    assert select_backend(lm("lm_off"), remote(), settings()).model == "gpt-x"


@pytest.mark.parametrize(
    ("spent", "backend"),
    [(None, "remote"), (0.0, "remote"), (0.4999, "remote"), (0.5, "none"), (3.0, "none")],
)
def test_a_spent_daily_remote_budget_makes_the_remote_unavailable(spent: float | None, backend: str) -> None:
    decision = select_backend(
        lm("lm_off"), remote(), settings(remote_llm_daily_budget_usd=0.5), remote_spent_today_usd=spent
    )
    assert decision.backend == backend
    if backend == "none":
        assert any("daily remote budget spent" in r and "REMOTE_LLM_DAILY_BUDGET_USD" in r for r in decision.reasons)
