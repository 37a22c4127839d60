"""`LMStudioServer`: the server policy of LM Studio (or any llama.cpp-style local server), as LM Studio
really behaves. The LM Studio resource gives it to the call loop (gemantria_dag/llm/call.py).

What it learns about its server, once per instance (from a health check, or else from a first probe
of LM Studio's native model listings before the first call), and what it does with that:
- the server kind: on LM Studio, non-streamed calls go to `/api/v0/chat/completions`, whose `stats`
  (tokens per second, time to first token, generation time, stop reason) fill the metadata; a 404 or
  "Unexpected endpoint" there falls back to `/v1/chat/completions` once, and is remembered. Other
  servers get `/v1/chat/completions`, with timings measured on the client.
- which models are loaded: a call for a model LM Studio has not loaded (it will load it just in
  time, which takes 10-25 s) gets the load budget (`load_timeout_seconds`) as its read timeout instead
  of the per-call timeout, until a call for that model has been answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from gemantria_dag.llm.call import CallState
from gemantria_dag.llm.errors import is_unknown_route
from gemantria_dag.llm.probe import TOKEN_MISSING_FIX, TOKEN_REFUSED_FIX, learn_server
from gemantria_dag.llm.probe_run import native_root
from gemantria_dag.llm.reply import Failure, Outcome, Reply
from gemantria_dag.llm.results import ErrorCode, HealthResult, LLMError, ServerKind, same_model
from gemantria_dag.names import LM_STUDIO

log = logging.getLogger(__name__)

NATIVE_CHAT = "/api/v0/chat/completions"
LM_STUDIO_KINDS: frozenset[str] = frozenset({"lm_studio", "lm_studio_legacy"})
# After a first probe that learned nothing (no answer, refused token), wait this long before the next.
PROFILE_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """What the policy knows of its server."""

    kind: ServerKind
    # The loaded models (keys and instance ids); None: this server cannot tell.
    loaded: frozenset[str] | None
    # "health" or "probe": what taught it.
    source: str
    # Predictions each loaded model runs at once (`loaded_instances[].config.parallel`), by key and instance id.
    parallel: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class LMStudioServer:
    """LM Studio's `ServerPolicy`. `secret` returns the API token at call time (never stored here)."""

    base_url: str
    native_api: bool
    timeout_seconds: float
    load_timeout_seconds: float
    secret: Callable[[], str | None]
    profile: ServerProfile | None = None
    profile_tried_at: float | None = None
    # None: not tried yet; False: the server has no such route (fell back to /v1).
    native_chat: bool | None = None
    # Models that have answered a call since the profile was learned: loaded, whatever it said.
    warm: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _probe_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def chat_url(self) -> str:
        """The OpenAI-compatible chat URL, `{base_url}/chat/completions`."""
        return f"{self.base_url.rstrip('/')}/chat/completions"

    @property
    def uses_native_chat(self) -> bool:
        """Whether non-streamed calls go to LM Studio's /api/v0/chat/completions."""
        profile = self.profile
        return (
            self.native_api
            and self.native_chat is not False
            and profile is not None
            and profile.kind in LM_STUDIO_KINDS
        )

    # ------------------------------------------------------------ learning the server

    def learn_from_health(self, result: HealthResult) -> None:
        """Keep what a health check found (server kind, loaded models) for the calls that follow."""
        d = result.details
        if d.server_kind is not None and d.probe is not None and d.probe.endswith("models"):
            loaded = None if d.loaded_models is None else frozenset(d.loaded_models)
            parallel = dict(d.loaded_parallel or {})
            self._set_profile(ServerProfile(kind=d.server_kind, loaded=loaded, source="health", parallel=parallel))

    def _set_profile(self, profile: ServerProfile) -> None:
        with self._lock:
            self.profile = profile
            self.profile_tried_at = time.monotonic()
            self.warm = set()

    def parallel_for(self, model: str | None) -> int | None:
        """The predictions `model` runs at once as the server said (its key or instance id; no model named:
        the only loaded one), or None when it did not say."""
        profile = self.profile
        if profile is None or not profile.parallel:
            return None
        if model is not None:
            return profile.parallel.get(model)
        values = set(profile.parallel.values())
        return values.pop() if len(values) == 1 else None

    def needs_preparing(self) -> bool:
        """True while no profile is known, at most every `PROFILE_RETRY_SECONDS` after a probe that failed."""
        if self.profile is not None:
            return False
        tried = self.profile_tried_at
        return tried is None or time.monotonic() - tried >= PROFILE_RETRY_SECONDS

    def prepare(self, client: httpx.Client) -> None:
        """Learn the profile (server kind, loaded models) from LM Studio's native listings (`learn_server`)."""
        # Calls that start together wait for the one probe instead of going out unprepared.
        with self._probe_lock:
            if not self.needs_preparing():
                return
            listing = learn_server(base_url=self.base_url, client=client, api_token=self.secret())
            if listing is None:
                self.profile_tried_at = time.monotonic()
                log.info(
                    "lm_studio: could not tell which server answers at %s yet; calls use /v1 for now", self.base_url
                )
                return
            self._set_profile(
                ServerProfile(kind=listing.kind, loaded=listing.loaded, source="probe", parallel=listing.parallel)
            )
        log.info("lm_studio: the server at %s is %s", self.base_url, listing.kind)

    # ------------------------------------------------------------ per attempt

    def endpoint(self, call: CallState) -> tuple[str, str]:
        """LM Studio's native chat route for a non-streamed call when `uses_native_chat`, else `chat_url`."""
        if not call.stream and self.uses_native_chat:
            return f"{native_root(self.base_url)}{NATIVE_CHAT}", NATIVE_CHAT
        url = self.chat_url
        return url, urlsplit(url).path

    def _model_maybe_unloaded(self, model: str | None) -> bool:
        profile = self.profile
        if model is None or profile is None or profile.kind not in LM_STUDIO_KINDS:
            # No model named: LM Studio answers with a loaded one, or at once with "No models loaded".
            return False
        if model in self.warm:
            return False
        return profile.loaded is None or model not in profile.loaded

    def read_timeout(self, call: CallState) -> float | None:
        """The load budget (`load_timeout_seconds`, if longer than the per-call timeout) when the requested model
        may not be loaded yet, else None."""
        if self.load_timeout_seconds <= self.timeout_seconds:
            return None
        return self.load_timeout_seconds if self._model_maybe_unloaded(call.requested_model) else None

    def observe(self, call: CallState, outcome: Outcome) -> bool:
        """Note which route and models answered; True (send again at once, on /v1) when the native route
        is missing. A timeout or `model_not_loaded` marks the model as maybe unloaded: its next attempt gets
        the load budget."""
        if isinstance(outcome, Reply):
            if call.endpoint == NATIVE_CHAT:
                self.native_chat = True
            if outcome.model:
                self.warm.add(outcome.model)
            requested = call.requested_model
            if requested and (outcome.model is None or same_model(requested, outcome.model)):
                self.warm.add(requested)
            return False
        assert isinstance(outcome, Failure)
        if call.endpoint == NATIVE_CHAT and is_unknown_route(outcome.error):
            self.native_chat = False
            log.info(
                "%s: %s has no %s (%s); using /v1/chat/completions from now on",
                LM_STUDIO,
                self.base_url,
                NATIVE_CHAT,
                outcome.error.message,
            )
            return True
        if outcome.error.code in (ErrorCode.TIMEOUT, ErrorCode.MODEL_NOT_LOADED) and call.requested_model:
            # It may have been unloaded (LM Studio unloads idle JIT models): the next attempt gets the load budget.
            self.warm.discard(call.requested_model)
            profile = self.profile
            if profile is not None and profile.loaded is not None and call.requested_model in profile.loaded:
                self.profile = ServerProfile(
                    kind=profile.kind,
                    loaded=profile.loaded - {call.requested_model},
                    source=profile.source,
                    parallel=profile.parallel,
                )
        return False

    def fix_for(self, error: LLMError, call: CallState) -> str | None:
        """`unauthorized`: set (or correct) LM_STUDIO_API_TOKEN; `model_not_loaded`: `lms load <model>`; else None."""
        if error.code == ErrorCode.UNAUTHORIZED:
            return TOKEN_REFUSED_FIX if self.secret() else TOKEN_MISSING_FIX
        if error.code == ErrorCode.MODEL_NOT_LOADED:
            model = call.requested_model
            return f"lms load {model}" if model else "load a model (`lms load <model>`) and set LM_STUDIO_MODEL"
        return None
