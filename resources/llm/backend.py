"""`LLMBackend`: the Dagster resource every LLM backend is, and the one call loop they share.

A backend is an OpenAI-compatible chat endpoint plus a health check. The loop here sends what a
`CallState` (gemantria_dag/llm/call.py: per-call state and retry policy, pure) says, over the
pools of `pools.py`, until the state returns the result. What differs by server is the
`ServerPolicy` a subclass gives (`server_policy()`); what differs by backend is its name, where
its secret comes from, and its health check.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from gemantria_dag.cost.prices import estimated_prompt_tokens
from gemantria_dag.llm.call import Backend, CallState, PlainServer, RetryPolicy, ServerPolicy, Timeouts
from gemantria_dag.llm.rate_limits import HORIZON_S, Pacer
from gemantria_dag.llm.request import StructuredForm, bearer, normalize_response_format, validate_call
from gemantria_dag.llm.results import CompletionResult, ErrorCode, HealthResult, LLMError
from resources.llm import transport
from resources.llm.pools import ConnectionPools, PoolSpec


class LLMBackend(ConfigurableResource, abc.ABC):
    """An OpenAI-compatible chat backend. `complete()` never raises for a backend failure."""

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://localhost:1234/v1")
    model: str | None = Field(default=None, description="Model to ask for when a call names none.")
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Per network operation of a completion (a non-streamed answer arrives in one piece, so this "
            "bounds the wait for it)."
        ),
    )
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=16, ge=1, description="Connection pool size: the calls in flight at once.")
    max_attempts: int = Field(default=1, ge=1, le=20)
    max_total_seconds: float = Field(default=300.0, gt=0, description="Budget for all attempts of one call.")
    backoff_base_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=8.0, ge=0)
    structured_output: Literal["auto", "json_schema", "json_object"] = Field(
        default="auto",
        description=(
            "Wire form of response_format. auto starts with json_schema (OpenAI, LM Studio), falls back once to the "
            "other form (json_object: llama-cpp-python) on that specific rejection, and remembers what worked; "
            "json_schema / json_object send only that form."
        ),
    )

    _state_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _pools: ConnectionPools | None = PrivateAttr(default=None)
    _backend: Backend | None = PrivateAttr(default=None)
    _prepare_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = PrivateAttr(default_factory=dict)
    _pacer: Pacer = PrivateAttr(default_factory=Pacer)

    # Whether proxies and certificates may come from the process environment (httpx's trust_env).
    _trust_env: ClassVar[bool] = True

    # ------------------------------------------------------------ what subclasses define

    @property
    @abc.abstractmethod
    def backend_name(self) -> str:
        """The name recorded in metadata (and as the control plane's tool)."""

    @abc.abstractmethod
    def _secret(self) -> str | None:
        """The bearer token, read from the settings at call time (never a config field)."""

    @abc.abstractmethod
    def health(self) -> HealthResult:
        """A cheap check that never raises for a backend failure (at most one tiny structured-output check)."""

    def _not_configured(self) -> str | None:
        """Why this backend cannot be called at all (a configuration gap), or None."""
        return None

    def server_policy(self) -> ServerPolicy:
        """What this backend's server changes in the call loop (built once per instance)."""
        return PlainServer(self.chat_url, urlsplit(self.chat_url).path, self._fixes())

    def _fixes(self) -> dict[str, str]:
        """{ErrorCode value: fix} this backend prints with such an error."""
        return {}

    # ------------------------------------------------------------ shared per-instance state

    @property
    def server_label(self) -> str:
        """Which server answers this backend's calls (recorded with each call): its base URL."""
        return self.base_url

    @property
    def chat_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    @property
    def timeouts(self) -> Timeouts:
        """The per-call timeouts: `timeout_seconds` for reads, the connect timeout never above it."""
        return Timeouts(read=self.timeout_seconds, connect=min(self.connect_timeout_seconds, self.timeout_seconds))

    def retry_policy(self) -> RetryPolicy:
        """Attempts, budgets and back-off of every call (a model that is loading is waited for within
        `_load_budget_seconds()`)."""
        return RetryPolicy(
            self.max_attempts,
            self.max_total_seconds,
            self.backoff_base_seconds,
            self.backoff_max_seconds,
            load_budget_seconds=self._load_budget_seconds(),
        )

    def _load_budget_seconds(self) -> float:
        """How long a call waits for a model that is loading (503 "Loading model")."""
        return self.max_total_seconds

    @property
    def calls(self) -> Backend:
        """What every call of this instance shares (server policy, retry policy, learned form)."""
        backend = self._backend
        if backend is None:
            with self._state_lock:
                if self._backend is None:
                    self._backend = Backend(
                        self.backend_name, self.server_policy(), self.retry_policy(), self.structured_output
                    )
                backend = self._backend
        return backend

    @property
    def pools(self) -> ConnectionPools:
        """This instance's connection pools (opened lazily)."""
        pools = self._pools
        if pools is None:
            with self._state_lock:
                if self._pools is None:
                    self._pools = ConnectionPools(
                        PoolSpec(
                            headers=lambda: bearer(self._secret()),
                            timeouts=self.timeouts,
                            size=self.max_connections,
                            trust_env=self._trust_env,
                            chat_url=self.chat_url,
                        )
                    )
                pools = self._pools
        return pools

    @property
    def learned_structured_form(self) -> StructuredForm | None:
        """The response_format form this server accepted, once a structured call has succeeded."""
        return self._backend.learned_form if self._backend is not None else None

    def ensure_pool_size(self, calls_in_flight: int) -> None:
        """Let `calls_in_flight` calls be in flight at once in the pools opened from now on.

        A run may ask for more concurrency than the resource's `max_connections` (run config
        against the environment's default); without this the pool would quietly cap it.
        """
        self.pools.grow(calls_in_flight)

    def _sync_client(self) -> httpx.Client:
        return self.pools.sync_client()

    @property
    def pacer(self) -> Pacer:
        """This backend's rate-limit pacer (what its server's rate-limit headers said, shared by every call)."""
        return self._pacer

    def _pace(self, call: CallState, sleep: Callable[[float], None]) -> None:
        """Wait (`sleep`) until this attempt fits the server's rate-limit allowance; see `Pacer.delay`. Its token
        cost is OpenAI's: the prompt's (estimated) tokens plus `max_tokens`."""
        pacer = self._pacer
        tokens = self._call_tokens(call)
        waited = 0.0
        while (wait := pacer.delay(tokens, HORIZON_S)) > HORIZON_S:
            sleep(HORIZON_S)
            waited += HORIZON_S
        mark = call.pace_mark = pacer.mark()
        if wait > 0.0:
            try:
                sleep(wait)
            finally:
                pacer.sent(mark)
        call.rate_limit_wait_s += waited + wait
        pacer.note_wait(waited + wait)

    async def _apace(self, call: CallState) -> None:
        """`_pace` for asyncio."""
        pacer = self._pacer
        tokens = self._call_tokens(call)
        waited = 0.0
        while (wait := pacer.delay(tokens, HORIZON_S)) > HORIZON_S:
            await asyncio.sleep(HORIZON_S)
            waited += HORIZON_S
        mark = call.pace_mark = pacer.mark()
        if wait > 0.0:
            try:
                # Wait for the remote's allowance instead of going out to be refused (a 429 counts too).
                await asyncio.sleep(wait)
            finally:
                pacer.sent(mark)
        call.rate_limit_wait_s += waited + wait
        pacer.note_wait(waited + wait)

    def _observe(self, call: CallState, status: int, get: Callable[[str], str | None]) -> None:
        """Hand an answer's rate-limit headers to the pacer, with the request they answer."""
        self._pacer.observe(status, get, call.pace_mark)

    @staticmethod
    def _call_tokens(call: CallState) -> int:
        chars = sum(len(m["content"]) for m in call.messages if isinstance(m.get("content"), str))
        return estimated_prompt_tokens(chars, len(call.messages)) + call.max_tokens

    # ------------------------------------------------------------ completions

    def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        response_format: object = None,
        stream: bool = False,
    ) -> CompletionResult:
        """One chat completion. Bad arguments raise ValueError; backend failures come back in the result."""
        call = self._new_call(prompt, messages, model, temperature, max_tokens, response_format, stream)
        problem = self._not_configured()
        if problem is not None:
            return call.fail_now(LLMError(code=ErrorCode.BAD_REQUEST, message=problem))
        client = self._sync_client()
        server = self.calls.server
        if server.needs_preparing():
            server.prepare(client)
        while True:
            if self._pacer.active:
                self._pace(call, time.sleep)
            call.begin_attempt()
            timeouts, own = self._attempt_timeouts(call)
            send = transport.send_stream if stream else transport.send
            outcome = send(client, call, timeouts, own, self._observe)
            step = call.after(outcome)
            if isinstance(step, CompletionResult):
                return step
            if step > 0:
                time.sleep(step)

    async def acomplete(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        response_format: object = None,
        stream: bool = False,
    ) -> CompletionResult:
        """`complete()` for asyncio; many may run at once on one loop (up to the pool size in flight)."""
        call = self._new_call(prompt, messages, model, temperature, max_tokens, response_format, stream)
        problem = self._not_configured()
        if problem is not None:
            return call.fail_now(LLMError(code=ErrorCode.BAD_REQUEST, message=problem))
        pool = self.pools.async_pool()
        if self.calls.server.needs_preparing():
            await self._aprepare()
        pacer = self._pacer
        while True:
            if pacer.active:
                await self._apace(call)
            call.begin_attempt()
            timeouts, own = self._attempt_timeouts(call)
            if stream:
                outcome = await transport.asend_stream(pool.client, call, timeouts, own, self._observe)
            else:
                outcome = await transport.asend(pool, call, timeouts, own, self._observe)
            step = call.after(outcome)
            if isinstance(step, CompletionResult):
                return step
            if step > 0:
                await asyncio.sleep(step)

    async def _aprepare(self) -> None:
        server = self.calls.server
        loop = asyncio.get_running_loop()
        lock = self._prepare_locks.get(loop)
        if lock is None:
            lock = self._prepare_locks.setdefault(loop, asyncio.Lock())
            for old in [lp for lp in self._prepare_locks if lp.is_closed()]:
                self._prepare_locks.pop(old, None)
        async with lock:  # one preparation per loop, however many calls start at once
            if server.needs_preparing():
                # A handful of small GETs once per instance: the sync client in a thread is simplest.
                await asyncio.to_thread(server.prepare, self._sync_client())

    def _new_call(
        self,
        prompt: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        model: str | None,
        temperature: float,
        max_tokens: int,
        response_format: object,
        stream: bool,
    ) -> CallState:
        checked = validate_call(prompt, messages, temperature, max_tokens)
        return CallState(
            backend=self.calls,
            messages=checked,
            requested_model=model or self.model,
            temperature=float(temperature),
            max_tokens=max_tokens,
            structured=normalize_response_format(response_format),
            stream=bool(stream),
            secret=self._secret(),
        )

    def _attempt_timeouts(self, call: CallState) -> tuple[Timeouts, bool]:
        """(this attempt's timeouts, whether they differ from the pools' own: the server policy gave
        the attempt its own read timeout, e.g. LM Studio's model-load budget)."""
        if call.read_timeout is None:
            return self.timeouts, False
        return Timeouts(read=call.read_timeout, connect=self.timeouts.connect), True

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the pooled clients; the next call opens new ones."""
        if self._pools is not None:
            self._pools.close()

    async def aclose(self) -> None:
        """Close the clients from inside the event loop that used them (cleanest for async code)."""
        if self._pools is not None:
            await self._pools.aclose()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()
