from __future__ import annotations

import pytest

from gemantria_dag.settings import SettingsError, load_settings


def test_defaults_match_rfc_080(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMATRIA_DSN")
    s = load_settings()
    assert s.lm_studio_base_url == "http://localhost:1234/v1"
    assert s.lm_studio_model is None
    assert s.lm_studio_timeout_seconds == 30
    assert s.lm_studio_health_endpoint == "/health"
    assert s.use_lm_studio is True
    assert s.db_mode == "embedded"
    assert s.bible_db_path.name == "hebrew.db"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LM_STUDIO_TIMEOUT_SECONDS", "abc", "LM_STUDIO_TIMEOUT_SECONDS='abc'"),
        ("LM_STUDIO_TIMEOUT_SECONDS", "-5", "greater than 0"),
        ("REMOTE_LLM_TIMEOUT_SECONDS", "soon", "REMOTE_LLM_TIMEOUT_SECONDS='soon'"),
        ("LM_STUDIO_BASE_URL", "localhost:1234", "must be an http(s) URL"),
        ("REMOTE_LLM_BASE_URL", "ftp://api.example.com", "must be an http(s) URL"),
        ("USE_LM_STUDIO", "maybe", "unknown mode"),
        ("LM_STUDIO_HEALTH_ENDPOINT", "health", "starting with '/'"),
        ("GEMATRIA_DSN", "mysql://u@h/db", "GEMATRIA_DSN"),
        ("LLM_ROUTING_INTERVAL_SECONDS", "1", "LLM_ROUTING_INTERVAL_SECONDS"),
    ],
)
def test_bad_value_fails_at_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert variable in message
    assert expected in message
    assert "\n" not in message  # one clear line, not a pydantic dump


def test_use_lm_studio_accepts_zero_and_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_LM_STUDIO", "0")
    assert load_settings().use_lm_studio is False
    monkeypatch.setenv("USE_LM_STUDIO", "1")
    assert load_settings().use_lm_studio is True


def test_dsn_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMATRIA_DSN", "OFF")
    assert load_settings().db_mode == "off"
    monkeypatch.setenv("GEMATRIA_DSN", "postgresql://u:pw@db.example:5432/gm")
    assert load_settings().db_mode == "dsn"
    monkeypatch.setenv("GEMATRIA_DSN", "host=db.example dbname=gm")
    assert load_settings().db_mode == "dsn"


SECRET = "sk-test-SECRET-4242"


def test_secrets_never_in_repr_or_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_LLM_API_KEY", SECRET)
    monkeypatch.setenv("LM_STUDIO_API_TOKEN", SECRET)
    monkeypatch.setenv("GEMATRIA_DSN", f"postgresql://u:{SECRET}@db.example/gm")
    s = load_settings()
    assert SECRET not in repr(s) and SECRET not in str(s) and SECRET not in str(s.model_dump())
    assert s.remote_llm_api_key is not None and s.remote_llm_api_key.get_secret_value() == SECRET
    # An invalid secret is reported without its value.
    monkeypatch.setenv("GEMATRIA_DSN", f"mysql://u:{SECRET}@db.example/gm")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert SECRET not in str(info.value) and "value hidden" in str(info.value)


def test_redacted_dsn_has_no_password() -> None:
    from gemantria_dag.db.target import redact_conninfo

    shown = redact_conninfo(f"postgresql://u:{SECRET}@db.example:5432/gm")
    assert SECRET not in shown and "db.example" in shown
