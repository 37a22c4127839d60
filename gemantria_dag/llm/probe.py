"""Health probes for LM Studio and remote OpenAI-compatible APIs, without Dagster.

The resources' `health()` methods and `pmagent health` both call these; the CLI imports this
module directly so that a health check does not pay for importing Dagster (about 1 s here).

These probes read small GET answers only: they never spend a completion, and they run on a
budget of its own (connect 1 s, everything at most HEALTH_BUDGET_SECONDS) so that a server
which accepts a connection and never answers cannot stall a caller.

LM Studio's health, in order (every answer is read: LM Studio answers routes it lacks with HTTP
200 and an error body, so a status alone says nothing):
1. the configured health endpoint (LM_STUDIO_HEALTH_ENDPOINT, default /health, relative to the
   server root). LM Studio serves none: an error body, or a body that is not LM Studio's, falls back to
2. `GET /lmstudio-greeting` (`{"lmstudio": true}`: what LM Studio's own CLI and SDK probe), then
3. the model listings: `/api/v1/models` (0.4, `loaded_instances`), else `/api/v0/models` (legacy,
   `state`); only a server that is not LM Studio, or an LM Studio older than both, falls back to
   `/v1/models`, which lists every downloaded model while just-in-time loading is on and so cannot
   tell "loaded".
"""

from __future__ import annotations

import time

import httpx

from gemantria_dag.llm.errors import (
    with_fix,
)
from gemantria_dag.llm.listings import Listing, parse_legacy_listing, parse_native_listing, parse_openai_listing
from gemantria_dag.llm.probe_run import HEALTH_BUDGET_SECONDS, Probe, ProbeRun, ms_since, native_root
from gemantria_dag.llm.request import bearer
from gemantria_dag.llm.results import ErrorCode, HealthDetails, HealthResult, LLMError, ServerKind
from gemantria_dag.settings import setting_default

# What a resource spends, once, to learn which server it talks to when no health check told it.
PROFILE_BUDGET_SECONDS = 2.0
DEFAULT_HEALTH_ENDPOINT = setting_default("lm_studio_health_endpoint")
GREETING = "/lmstudio-greeting"
NATIVE_MODELS = "/api/v1/models"
LEGACY_MODELS = "/api/v0/models"
# Fixes printed with the errors (the token itself is never printed).
TOKEN_MISSING_FIX = "set LM_STUDIO_API_TOKEN to the server's API token"
TOKEN_REFUSED_FIX = "LM_STUDIO_API_TOKEN was refused: set it to one of the server's API tokens"
REMOTE_KEY_FIX = "check REMOTE_LLM_API_KEY (the server refused it)"
LM_OFF_FIX = "start LM Studio's server (`lms server start`) or correct LM_STUDIO_BASE_URL"


def _listing_probes(base_url: str, root: str, *, openai_fallback: bool) -> list[Probe]:
    probes = [
        Probe(NATIVE_MODELS, f"{root}{NATIVE_MODELS}", parse_native_listing),
        Probe(LEGACY_MODELS, f"{root}{LEGACY_MODELS}", parse_legacy_listing),
    ]
    if openai_fallback:
        probes.append(Probe(httpx.URL(f"{base_url}/models").path, f"{base_url}/models", parse_openai_listing))
    return probes


def _shown(models: list[str] | frozenset[str], limit: int = 10) -> str:
    names = sorted(models) if isinstance(models, frozenset) else list(models)
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def _judge_model(
    model: str | None, listing: Listing, *, setting: str = "LM_STUDIO_MODEL", lm_studio: bool = True
) -> tuple[bool | None, bool | None, LLMError | None]:
    """(model_present, model_loaded, problem) for the configured model against a listing."""
    if model is None:
        if listing.loaded is not None and not listing.loaded:
            fix = f"load a model (`lms load <model>`) and set {setting} to it"
            return (
                None,
                None,
                LLMError(code=ErrorCode.MODEL_NOT_LOADED, fix=fix, message=f"no models loaded (fix: {fix})"),
            )
        if not listing.models:
            return None, None, LLMError(code=ErrorCode.MODEL_NOT_FOUND, message="the server lists no models")
        return None, None, None
    loaded = None if listing.loaded is None else model in listing.loaded
    present = model in listing.models or bool(loaded)
    if not present:
        fix = (
            f"download it (`lms get {model}`) or set {setting} to one of the server's models"
            if lm_studio
            else f"set {setting} to one of the server's models"
        )
        return (
            False,
            loaded,
            LLMError(
                code=ErrorCode.MODEL_NOT_FOUND,
                fix=fix,
                message=(
                    f"model {model!r} is not among the server's {len(listing.models)} models "
                    f"({_shown(listing.models) or 'none'}) (fix: {fix})"
                ),
            ),
        )
    if loaded is False:
        fix = f"lms load {model}"
        others = [m for m in listing.models if m in (listing.loaded or ())]
        if others:
            what = f"model {model!r} is downloaded but not loaded; the loaded models are {_shown(others)}"
        else:
            what = f"no models loaded: model {model!r} is downloaded, but LM Studio has nothing loaded"
        return True, False, LLMError(code=ErrorCode.MODEL_NOT_LOADED, fix=fix, message=f"{what} (fix: {fix})")
    return True, loaded, None


def _token_fix(api_token: str | None) -> str:
    return TOKEN_REFUSED_FIX if api_token else TOKEN_MISSING_FIX


_KIND_NAMES: dict[str | None, str] = {
    "lm_studio": "LM Studio (0.4 API)",
    "lm_studio_legacy": "LM Studio (legacy API)",
    "openai_compatible": "an OpenAI-compatible server (not LM Studio)",
    None: "the server",
}


def lm_studio_health(
    *,
    base_url: str,
    model: str | None,
    api_token: str | None = None,
    client: httpx.Client | None = None,
    budget_seconds: float = HEALTH_BUDGET_SECONDS,
    health_endpoint: str = DEFAULT_HEALTH_ENDPOINT,
) -> HealthResult:
    """LM Studio's health: lm_ready, lm_off (nothing listens) or error (something is wrong).

    The token, when given, goes with every request (the greeting included) and never into the result.
    """
    started = time.perf_counter()
    base = base_url.rstrip("/")
    root = native_root(base)
    endpoint = health_endpoint if health_endpoint.startswith("/") else f"/{health_endpoint}"
    owned = client is None
    http = client or httpx.Client(trust_env=False)
    try:
        run = ProbeRun(
            http, bearer(api_token), api_token, time.monotonic() + budget_seconds, budget_seconds=budget_seconds
        )
        identified_by = run.identify(root, [endpoint, GREETING])
        found = None if run.stopped else run.listing(_listing_probes(base, root, openai_fallback=True))
    finally:
        if owned:
            http.close()
    details = HealthDetails(
        base_url=base_url, model=model, latency_ms=ms_since(started), identified_by=identified_by, probes=run.steps
    )
    if found is None:
        error = run.last_error or LLMError(code=ErrorCode.BAD_RESPONSE, message="no probe answered")
        details.probe = run.last_label
        details.server_kind = "lm_studio" if identified_by else None
        if run.connect_failed:
            details.error = with_fix(error, LM_OFF_FIX)
            details.message = f"LM Studio is off: nothing answers at {base_url} ({details.error.message})"
            return HealthResult(ok=False, mode="lm_off", details=details)
        if error.code == ErrorCode.UNAUTHORIZED:
            error = with_fix(error, _token_fix(api_token))
            details.error = error
            details.message = f"{_KIND_NAMES[details.server_kind]} at {base_url} refused the request: {error.message}"
            return HealthResult(ok=False, mode="error", details=details)
        details.error = error
        if error.code == ErrorCode.MODEL_LOADING:
            details.message = (
                f"the server at {base_url} is loading its model ({error.message}): calls wait for it, "
                "up to LM_STUDIO_LOAD_TIMEOUT_SECONDS"
            )
            return HealthResult(ok=False, mode="lm_loading", details=details)
        details.message = f"LM Studio at {base_url} is not usable: {error.message}"
        return HealthResult(ok=False, mode="error", details=details)
    probe, listing = found
    kind: ServerKind = listing.kind
    if kind == "openai_compatible" and identified_by:
        kind = "lm_studio_legacy"  # an LM Studio older than both native listings
    present, loaded, problem = _judge_model(model, listing, lm_studio=kind != "openai_compatible")
    details.available_models = listing.models
    if listing.loaded is not None:
        # Model keys in listing order, then any further instance ids (`key:2`).
        details.loaded_models = [m for m in listing.models if m in listing.loaded] + sorted(
            listing.loaded.difference(listing.models)
        )
    if listing.parallel:
        details.loaded_parallel = dict(listing.parallel)
    details.model_present, details.model_loaded = present, loaded
    details.probe, details.server_kind, details.error = probe.label, kind, problem
    who = _KIND_NAMES[kind]
    if problem is not None:
        details.message = f"{who} at {base_url} answers, but {problem.message}"
        return HealthResult(ok=False, mode="error", details=details)
    if model is None:
        state = "no model configured (LM_STUDIO_MODEL): the server answers with what it has loaded"
    elif loaded:
        state = f"model {model} is loaded"
    else:
        state = f"model {model} is listed (this server cannot tell whether it is loaded)"
    details.message = f"{who} at {base_url} answers; {state}"
    return HealthResult(ok=True, mode="lm_ready", details=details)


def learn_server(
    *, base_url: str, client: httpx.Client, api_token: str | None = None, budget_seconds: float = PROFILE_BUDGET_SECONDS
) -> Listing | None:
    """Which server this is, from LM Studio's native listings alone (for a resource's first call).

    A listing: LM Studio (0.4 or legacy) with its loaded models. Neither route there (404s, error
    bodies): another OpenAI-compatible server. None: unknown this time (no answer, refused token,
    a server error), so the caller may ask again later.
    """
    base = base_url.rstrip("/")
    run = ProbeRun(
        client, bearer(api_token), api_token, time.monotonic() + budget_seconds, budget_seconds=budget_seconds
    )
    found = run.listing(_listing_probes(base, native_root(base), openai_fallback=False))
    if found is not None:
        return found[1]
    if run.stopped or any(step.status is None or step.status >= 500 for step in run.steps):
        return None
    return Listing(models=[], loaded=None, kind="openai_compatible")


def remote_health(
    *,
    base_url: str | None,
    model: str | None,
    api_key: str | None,
    provider: str,
    client: httpx.Client | None = None,
    budget_seconds: float = HEALTH_BUDGET_SECONDS,
) -> HealthResult:
    """A remote API's health from `GET /models` alone: remote_ready, remote_off or error.

    It never spends a completion (nor a token of the account's quota)."""
    started = time.perf_counter()
    details = HealthDetails(base_url=base_url, model=model, provider=provider)
    missing = [
        name
        for name, value in (
            ("REMOTE_LLM_BASE_URL", base_url),
            ("REMOTE_LLM_API_KEY", api_key),
            ("REMOTE_LLM_MODEL", model),
        )
        if not value
    ]
    if missing:
        details.message = f"remote LLM is off: {', '.join(missing)} not set"
        return HealthResult(ok=False, mode="remote_off", details=details)
    assert base_url is not None
    probe = Probe(httpx.URL(f"{base_url}/models").path, f"{base_url}/models", parse_openai_listing)
    owned = client is None
    http = client or httpx.Client()
    try:
        run = ProbeRun(http, bearer(api_key), api_key, time.monotonic() + budget_seconds, budget_seconds=budget_seconds)
        found = run.listing([probe])
    finally:
        if owned:
            http.close()
    details.latency_ms, details.probe, details.probes = ms_since(started), probe.label, run.steps
    if found is None:
        error = run.last_error
        if error is not None and error.code == ErrorCode.UNAUTHORIZED:
            error = with_fix(error, REMOTE_KEY_FIX)
        details.error = error
        why = error.message if error else "no answer"
        if run.connect_failed:
            details.message = f"remote LLM is off: nothing answers at {base_url} ({why})"
            return HealthResult(ok=False, mode="remote_off", details=details)
        details.message = f"remote LLM at {base_url} is not usable: {why}"
        return HealthResult(ok=False, mode="error", details=details)
    _, listing = found
    present, _, problem = _judge_model(model, listing, setting="REMOTE_LLM_MODEL", lm_studio=False)
    details.available_models, details.model_present = listing.models, present
    details.server_kind, details.error = listing.kind, problem
    if problem is not None:
        details.message = f"remote LLM at {base_url} answers, but {problem.message}"
        return HealthResult(ok=False, mode="error", details=details)
    details.message = f"remote LLM at {base_url} answers; model {model} listed"
    return HealthResult(ok=True, mode="remote_ready", details=details)
