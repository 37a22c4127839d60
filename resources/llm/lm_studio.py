"""`LMStudioResource`: LM Studio's server (or any llama.cpp-style local server), as LM Studio really behaves.

What it learns about its server, once per instance (from `health()`, or else from a first probe of
LM Studio's native model listings before the first call), and what it does with that:
- the server kind: on LM Studio, non-streamed calls go to `/api/v0/chat/completions`, whose `stats`
  (tokens per second, time to first token, generation time, stop reason) fill the metadata; a 404 or
  "Unexpected endpoint" there falls back to `/v1/chat/completions` once, and is remembered. Other
  servers get `/v1/chat/completions`, with timings measured on the client.
- which models are loaded: a call for a model LM Studio has not loaded (it will load it just in
  time, which takes 10-25 s) gets the load budget (`load_timeout_seconds`) as its read timeout instead
  of `timeout_seconds`, until a call for that model has been answered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import httpx
from pydantic import Field, PrivateAttr

from gemantria_dag.settings import Settings, get_settings
from resources.llm.base import LLMBackend, _Call
from resources.llm.openai_protocol import Failure, Outcome, Reply, is_unknown_route
from resources.llm.probe import (
    DEFAULT_HEALTH_ENDPOINT,
    TOKEN_MISSING_FIX,
    TOKEN_REFUSED_FIX,
    learn_server,
    lm_studio_health,
    native_root,
)
from resources.llm.results import ErrorCode, HealthResult, LLMError, ServerKind, same_model

log = logging.getLogger(__name__)

BACKEND_NAME = "lm_studio"
NATIVE_CHAT = "/api/v0/chat/completions"
LM_STUDIO_KINDS: frozenset[str] = frozenset({"lm_studio", "lm_studio_legacy"})
# After a first probe that learned nothing (no answer, refused token), wait this long before the next.
PROFILE_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """What this resource knows of its server."""

    kind: ServerKind
    # The loaded models (keys and instance ids); None: this server cannot tell.
    loaded: frozenset[str] | None
    # "health" or "probe": what taught it.
    source: str


class LMStudioResource(LLMBackend):
    """LM Studio on this machine or the LAN. The optional API token (LM Studio 0.4 can require one)
    comes from LM_STUDIO_API_TOKEN through the settings and goes with every request, health checks
    included; it is never part of this resource's config nor of any result."""

    base_url: str = Field(default="http://localhost:1234/v1", description="LM Studio's OpenAI-compatible base URL.")
    timeout_seconds: float = Field(default=30.0, gt=0)
    load_timeout_seconds: float = Field(default=60.0, gt=0, description=(
        "Read timeout of a call that may make LM Studio load its model just in time (the model is not known "
        "to be loaded): loading takes 10-25 s, which the per-call timeout must not cut short."))
    # A local server runs a few predictions at once and queues the rest: a small pool is enough.
    max_connections: int = Field(default=2, ge=1)
    health_endpoint: str = Field(default=DEFAULT_HEALTH_ENDPOINT, description=(
        "Tried first by health(), relative to the server root (not /v1). LM Studio serves none (it answers "
        "HTTP 200 with an error body), so health() falls back to /lmstudio-greeting and the model listings."))
    native_api: bool = Field(default=True, description=(
        "On LM Studio, send non-streamed calls to /api/v0/chat/completions, whose stats fill the metadata."))

    # LM Studio is local or on the LAN: a proxy from the environment would only misroute it.
    _trust_env: ClassVar[bool] = False

    _profile: ServerProfile | None = PrivateAttr(default=None)
    _profile_tried_at: float | None = PrivateAttr(default=None)
    _profile_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _probe_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _aprofile_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = PrivateAttr(default_factory=dict)
    # None: not tried yet; False: the server has no such route (fell back to /v1).
    _native_chat: bool | None = PrivateAttr(default=None)
    # Models that have answered a call since the profile was learned: loaded, whatever it said.
    _warm: set[str] = PrivateAttr(default_factory=set)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LMStudioResource:
        s = settings or get_settings()
        return cls(base_url=s.lm_studio_base_url, model=s.lm_studio_model, timeout_seconds=s.lm_studio_timeout_seconds,
                   load_timeout_seconds=s.lm_studio_load_timeout_seconds, health_endpoint=s.lm_studio_health_endpoint,
                   max_connections=s.lm_studio_max_concurrency)

    @property
    def backend_name(self) -> str:
        return BACKEND_NAME

    def _secret(self) -> str | None:
        token = get_settings().lm_studio_api_token
        return token.get_secret_value() if token is not None else None

    # ------------------------------------------------------------ health

    def health(self) -> HealthResult:
        """lm_ready | lm_off | error: the health endpoint, the greeting, then the model listings (never a
        completion). What it finds (server kind, loaded models) is kept for the calls that follow."""
        result = lm_studio_health(base_url=self.base_url.rstrip("/"), model=self.model, api_token=self._secret(),
                                  client=self._sync_client(), health_endpoint=self.health_endpoint)
        d = result.details
        if d.server_kind is not None and d.probe is not None and d.probe.endswith("models"):
            loaded = None if d.loaded_models is None else frozenset(d.loaded_models)
            self._set_profile(ServerProfile(kind=d.server_kind, loaded=loaded, source="health"))
        return result

    # ------------------------------------------------------------ what the server taught

    @property
    def server_kind(self) -> ServerKind | None:
        """lm_studio | lm_studio_legacy | openai_compatible, once learned (None before)."""
        return self._profile.kind if self._profile is not None else None

    @property
    def profile(self) -> ServerProfile | None:
        return self._profile

    @property
    def uses_native_chat(self) -> bool:
        """Whether non-streamed calls go to LM Studio's /api/v0/chat/completions."""
        profile = self._profile
        return (self.native_api and self._native_chat is not False and profile is not None
                and profile.kind in LM_STUDIO_KINDS)

    def _set_profile(self, profile: ServerProfile) -> None:
        with self._profile_lock:
            self._profile = profile
            self._profile_tried_at = time.monotonic()
            self._warm = set()

    def _needs_profile(self) -> bool:
        if self._profile is not None:
            return False
        tried = self._profile_tried_at
        return tried is None or time.monotonic() - tried >= PROFILE_RETRY_SECONDS

    def _learn(self, client: httpx.Client) -> None:
        # Calls that start together wait for the one probe instead of going out unprepared.
        with self._probe_lock:
            if not self._needs_profile():
                return
            listing = learn_server(base_url=self.base_url, client=client, api_token=self._secret())
            if listing is None:
                self._profile_tried_at = time.monotonic()
                log.info("lm_studio: could not tell which server answers at %s yet; calls use /v1 for now",
                         self.base_url)
                return
            self._set_profile(ServerProfile(kind=listing.kind, loaded=listing.loaded, source="probe"))
        log.info("lm_studio: the server at %s is %s", self.base_url, listing.kind)

    def _prepare(self, client: httpx.Client) -> None:
        if self._needs_profile():
            self._learn(client)

    async def _aprepare(self, client: httpx.AsyncClient) -> None:
        if not self._needs_profile():
            return
        loop = asyncio.get_running_loop()
        lock = self._aprofile_locks.get(loop)
        if lock is None:
            lock = self._aprofile_locks.setdefault(loop, asyncio.Lock())
            for old in [lp for lp in self._aprofile_locks if lp.is_closed()]:
                self._aprofile_locks.pop(old, None)
        async with lock:  # one probe per loop, however many calls start at once
            if self._needs_profile():
                # A handful of small GETs once per instance: the sync client in a thread is simplest.
                await asyncio.to_thread(self._learn, self._sync_client())

    # ------------------------------------------------------------ per attempt

    def _chat_endpoint(self, call: _Call) -> tuple[str, str]:
        if not call.stream and self.uses_native_chat:
            return f"{native_root(self.base_url)}{NATIVE_CHAT}", NATIVE_CHAT
        return super()._chat_endpoint(call)

    def _model_maybe_unloaded(self, model: str | None) -> bool:
        profile = self._profile
        if model is None or profile is None or profile.kind not in LM_STUDIO_KINDS:
            # No model named: LM Studio answers with a loaded one, or at once with "No models loaded".
            return False
        if model in self._warm:
            return False
        return profile.loaded is None or model not in profile.loaded

    def _read_timeout_for(self, call: _Call) -> float | None:
        if self.load_timeout_seconds <= self.timeout_seconds:
            return None
        return self.load_timeout_seconds if self._model_maybe_unloaded(call.requested_model) else None

    def _observe(self, call: _Call, outcome: Outcome) -> bool:
        if isinstance(outcome, Reply):
            if call.endpoint == NATIVE_CHAT:
                self._native_chat = True
            if outcome.model:
                self._warm.add(outcome.model)
            requested = call.requested_model
            if requested and (outcome.model is None or same_model(requested, outcome.model)):
                self._warm.add(requested)
            return False
        assert isinstance(outcome, Failure)
        if call.endpoint == NATIVE_CHAT and is_unknown_route(outcome.error):
            self._native_chat = False
            log.info("lm_studio: %s has no %s (%s); using /v1/chat/completions from now on", self.base_url,
                     NATIVE_CHAT, outcome.error.message)
            return True
        if outcome.error.code in (ErrorCode.TIMEOUT, ErrorCode.MODEL_NOT_LOADED) and call.requested_model:
            # It may have been unloaded (LM Studio unloads idle JIT models): the next attempt gets the load budget.
            self._warm.discard(call.requested_model)
            profile = self._profile
            if profile is not None and profile.loaded is not None and call.requested_model in profile.loaded:
                self._profile = ServerProfile(kind=profile.kind, loaded=profile.loaded - {call.requested_model},
                                              source=profile.source)
        return False

    def _fix_for(self, error: LLMError, call: _Call) -> str | None:
        if error.code == ErrorCode.UNAUTHORIZED:
            return TOKEN_REFUSED_FIX if self._secret() else TOKEN_MISSING_FIX
        if error.code == ErrorCode.MODEL_NOT_LOADED:
            model = call.requested_model
            return f"lms load {model}" if model else "load a model (`lms load <model>`) and set LM_STUDIO_MODEL"
        return None
