"""LM Studio's HTTP API, emulated in front of a real OpenAI-compatible engine (aiohttp).

What is emulated, and where each behaviour comes from, is listed in the package docstring
(`tests/lmstudio_emulator/__init__.py`). In short: the catalogue and its three listings, load and
unload, the greeting, unknown routes answering 200 with an error body, the optional API token,
just-in-time loading, model substitution, LM Studio's error shapes, structured output as LM Studio
takes it, `/api/v0` stats, streaming with a fault switch, and at most N predictions at once.
Generation itself is forwarded to the upstream server, so text, token counts and timings are real.

Test control lives under `/__admin/*`, apart from every LM Studio route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import string
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import aiohttp
from aiohttp import web

from tests.lmstudio_emulator.catalogue import (
    DEFAULT_SCENARIO,
    OTHER_MODEL,
    PRIMARY_MODEL,
    SCENARIOS,
    ModelSpec,
    default_catalogue,
)

log = logging.getLogger("lmstudio_emulator")

ADMIN_PREFIX = "/__admin"
AUTH_DOCS = "https://lmstudio.ai/docs/developer/core/authentication"
MISSING_TOKEN_MESSAGE = (
    "An LM Studio API token is required to make requests to this server, but none was provided using the "
    "Authorization header using the 'Bearer' scheme (i.e., 'Authorization: Bearer $LM_API_TOKEN'). "
    f"Learn more at: {AUTH_DOCS}."
)
INVALID_TOKEN_MESSAGE = f"The provided LM Studio API token is invalid. Learn more at: {AUTH_DOCS}."
NO_MODELS_MESSAGE = "No models loaded. Please load a model in the developer page or use the `lms load` command."
CRASH_MESSAGE = "The model has crashed without additional information. (Exit code: null)"
JSON_OBJECT_MESSAGE = "'response_format.type' must be 'json_schema' or 'text'"
RUNTIME = {"name": "llama.cpp-linux-x86_64-avx2", "version": "1.50.2", "supported_formats": ["gguf"]}
STOP_REASONS = {"stop": "eosFound", "length": "maxPredictedTokensReached", "tool_calls": "toolCalls"}
CUT_MODES = ("eof", "done", "abort")


@dataclass
class EmulatorConfig:
    """Fixed for the life of the process (the CLI's options)."""

    upstream: str  # the upstream llama-server's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    upstream_model: str | None = None  # the upstream's model name; None: the first of its /v1/models
    scenario: str = DEFAULT_SCENARIO
    token: str | None = None
    jit_load_seconds: float = 2.0
    jit: bool | None = None  # None: the scenario's default
    max_predictions: int = 4
    primary_model: str = PRIMARY_MODEL

    def __post_init__(self) -> None:
        base = self.upstream.rstrip("/")
        self.upstream = base if base.endswith("/v1") else f"{base}/v1"
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; known: {', '.join(SCENARIOS)}")


@dataclass
class Knobs:
    """What a scenario sets and what `POST /__admin/scenario` may override."""

    scenario: str
    jit: bool
    jit_load_seconds: float
    token: str | None
    auto_evict: bool = True  # a JIT load unloads the models an earlier JIT load brought in (LM Studio's default)
    substitution: bool = True  # exactly one model loaded: requests naming another model get that one
    crashed: bool = False  # every completion answers 400 with a plain-string error
    crash_message: str = CRASH_MESSAGE
    no_models_status: int = 400  # 404 on LM Studio 0.3.5
    cut_stream_after_chunks: int | None = None  # forward N SSE chunks, then end the stream without a finish
    cut_stream_mode: str = "eof"  # eof: end the body cleanly; done: send [DONE]; abort: drop the connection
    cut_stream_times: int | None = None  # how many streams to cut (None: every one)
    upstream_delay_seconds: float = 0.0  # extra latency inside a prediction slot (for queueing tests)


@dataclass
class Instance:
    id: str
    key: str
    jit: bool  # loaded by a just-in-time load (auto-evict only unloads these)
    context_length: int | None = None  # None: the model's default


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(body)
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status)


def _plain(status: int, message: str) -> ApiError:
    """LM Studio's other error shape: `error` is a string, not an object."""
    return ApiError(status, {"error": message})


def _openai_error(status: int, message: str, *, code: str, param: str = "model") -> ApiError:
    return ApiError(
        status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    )


def _json_body(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"error": text}


def _new_id(prefix: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(21))


class Emulator:
    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.catalogue: dict[str, ModelSpec] = default_catalogue(config.primary_model)
        self.primary = config.primary_model
        self.other = OTHER_MODEL
        self.upstream_model = config.upstream_model
        self.prediction_slots = asyncio.Semaphore(config.max_predictions)
        self.load_lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None
        self.epoch = 0
        self.active_predictions = 0
        self.queued_predictions = 0
        self.knobs: Knobs
        self.instances: list[Instance]
        self.counters: Counter[str]
        self.requests: Counter[str]
        self.max_concurrent = 0
        self.max_queued = 0
        self.cuts_done = 0
        self.reset()

    # -- state -----------------------------------------------------------------------------------
    def reset(self, scenario: str | None = None, *, counters: bool = True, **overrides: Any) -> None:
        name = scenario or self.config.scenario
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        spec = SCENARIOS[name]
        jit = spec.jit
        if scenario is None and self.config.jit is not None:  # the CLI's --jit applies to its own scenario
            jit = self.config.jit
        self.epoch += 1
        self.knobs = Knobs(
            scenario=name, jit=jit, jit_load_seconds=self.config.jit_load_seconds, token=self.config.token
        )
        self.instances = [Instance(id=key, key=key, jit=False) for key in (self._role(r) for r in spec.loaded)]
        self.cuts_done = 0
        if counters:
            self.reset_counters()
        self.apply(**overrides)

    def _role(self, name: str) -> str:
        return {"primary": self.primary, "other": self.other}.get(name, name)

    def reset_counters(self) -> None:
        self.counters = Counter()
        self.requests = Counter()
        self.max_concurrent = 0
        self.max_queued = 0

    def apply(self, **overrides: Any) -> None:
        known = {f.name for f in fields(Knobs)} - {"scenario"}
        loaded = overrides.pop("loaded", None)
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(
                f"unknown setting(s): {', '.join(sorted(unknown))}; known: loaded, " + ", ".join(sorted(known))
            )
        if "cut_stream_mode" in overrides and overrides["cut_stream_mode"] not in CUT_MODES:
            raise ValueError(f"cut_stream_mode must be one of {CUT_MODES}")
        for key, value in overrides.items():
            setattr(self.knobs, key, value)
        if "cut_stream_after_chunks" in overrides or "cut_stream_times" in overrides:
            self.cuts_done = 0
        if loaded is not None:
            keys = [self._role(k) for k in loaded]
            missing = [k for k in keys if k not in self.catalogue]
            if missing:
                raise ValueError(f"not in the catalogue: {missing}; known: {list(self.catalogue)}")
            self.instances = [Instance(id=k, key=k, jit=False) for k in keys]

    def state(self) -> dict[str, Any]:
        return {
            "knobs": {**asdict(self.knobs), "token": "***" if self.knobs.token else None},
            "primary_model": self.primary,
            "other_model": self.other,
            "upstream": self.config.upstream,
            "upstream_model": self.upstream_model,
            "catalogue": list(self.catalogue),
            "loaded_instances": [asdict(i) for i in self.instances],
            "max_predictions": self.config.max_predictions,
            "scenarios": {name: s.description for name, s in SCENARIOS.items()},
        }

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            **{
                k: self.counters.get(k, 0)
                for k in (
                    "predictions",
                    "jit_loads",
                    "api_loads",
                    "loads",
                    "unloads",
                    "evictions",
                    "substitutions",
                    "cut_streams",
                    "unauthorized",
                    "crashed_answers",
                    "upstream_calls",
                )
            },
            "errors": {k.removeprefix("error:"): v for k, v in self.counters.items() if k.startswith("error:")},
            "active_predictions": self.active_predictions,
            "queued_predictions": self.queued_predictions,
            "max_concurrent_predictions": self.max_concurrent,
            "max_queued_predictions": self.max_queued,
        }

    def loaded_ids(self, key: str) -> list[str]:
        return [i.id for i in self.instances if i.key == key]

    # -- model resolution: JIT loading, substitution and the not-found errors ---------------------
    def _not_found(self, name: str) -> ApiError:
        models = "\n".join(self.catalogue)
        message = f'Model "{name}" not found. Please specify a valid model.\n\nYour models:\n\n{models}'
        return _openai_error(404, message, code="model_not_found")

    async def resolve(self, requested: str | None) -> tuple[ModelSpec, str, bool]:
        """(the model that answers, its instance id, whether that is a substitution)."""
        name = requested or ""
        for inst in self.instances:
            if name in (inst.id, inst.key):
                return self.catalogue[inst.key], inst.id, False
        spec = self.catalogue.get(name)
        if spec is not None and not spec.is_llm:
            raise _plain(400, f'Model "{name}" is an embedding model and cannot be used for chat or text completions.')
        llm_instances = [i for i in self.instances if self.catalogue[i.key].is_llm]
        if self.knobs.jit and spec is not None:
            iid = await self.jit_load(spec)
            return spec, iid, False
        if len(llm_instances) == 1 and self.knobs.substitution:
            inst = llm_instances[0]
            return self.catalogue[inst.key], inst.id, bool(name) and name not in (inst.id, inst.key)
        if not llm_instances and not self.knobs.jit:
            raise _openai_error(self.knobs.no_models_status, NO_MODELS_MESSAGE, code="model_not_found")
        raise self._not_found(name)

    async def jit_load(self, spec: ModelSpec) -> str:
        async with self.load_lock:
            existing = self.loaded_ids(spec.key)
            if existing:  # another request loaded it while this one waited
                return existing[0]
            return await self.load(spec, jit=True)

    async def load(self, spec: ModelSpec, *, jit: bool, context_length: int | None = None) -> str:
        """Take the load time, then add an instance (`key`, then `key:2`, ... when loaded again)."""
        epoch = self.epoch
        await asyncio.sleep(self.knobs.jit_load_seconds)
        existing = self.loaded_ids(spec.key)
        iid = spec.key if not existing else f"{spec.key}:{len(existing) + 1}"
        if epoch == self.epoch:  # a reset during the load discards it
            if jit and self.knobs.auto_evict:
                evicted = [i for i in self.instances if i.jit]
                self.instances = [i for i in self.instances if not i.jit]
                self.counters["evictions"] += len(evicted)
            self.instances.append(Instance(id=iid, key=spec.key, jit=jit, context_length=context_length))
        self.counters["jit_loads" if jit else "api_loads"] += 1
        self.counters["loads"] += 1
        return iid

    # -- prediction slots (at most N at once, the rest queued) ---------------------------------
    @contextlib.asynccontextmanager
    async def prediction(self) -> AsyncIterator[None]:
        queued = self.prediction_slots.locked()
        if queued:
            self.queued_predictions += 1
            self.max_queued = max(self.max_queued, self.queued_predictions)
        try:
            await self.prediction_slots.acquire()
        finally:
            if queued:
                self.queued_predictions -= 1
        self.active_predictions += 1
        self.max_concurrent = max(self.max_concurrent, self.active_predictions)
        self.counters["predictions"] += 1
        try:
            if self.knobs.upstream_delay_seconds:
                await asyncio.sleep(self.knobs.upstream_delay_seconds)
            yield
        finally:
            self.active_predictions -= 1
            self.prediction_slots.release()

    # -- upstream --------------------------------------------------------------------------------
    async def ensure_upstream_model(self) -> str:
        if self.upstream_model:
            return self.upstream_model
        assert self.session is not None
        async with self.session.get(f"{self.config.upstream}/models") as resp:
            data = await resp.json(content_type=None)
        self.upstream_model = data["data"][0]["id"]
        return self.upstream_model

    async def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request as llama-server takes it: LM Studio's own fields dropped, the upstream's model named.

        Everything else goes as it came: llama-server takes `response_format` `json_schema` (and
        `text`), `max_tokens` -1 (no limit) and `stream_options.include_usage` as LM Studio does.
        """
        out = {k: v for k, v in body.items() if k not in {"ttl", "draft_model"}}
        out["model"] = await self.ensure_upstream_model()
        return out

    async def upstream_post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        assert self.session is not None
        self.counters["upstream_calls"] += 1
        async with self.session.post(f"{self.config.upstream}/{path}", json=body) as resp:
            return resp.status, _json_body(await resp.text())


def _v0_stats(timings: Any, finish: str | None) -> dict[str, Any]:
    """LM Studio's `stats` from llama-server's own `timings` (LM Studio runs llama.cpp too)."""
    if not isinstance(timings, dict) or not {"prompt_ms", "predicted_ms", "predicted_per_second"} <= set(timings):
        raise _plain(502, f"emulator: the upstream sent no llama-server `timings` to build `stats` from: {timings!r}")
    return {
        "tokens_per_second": timings["predicted_per_second"],
        "time_to_first_token": timings["prompt_ms"] / 1000.0,
        "generation_time": timings["predicted_ms"] / 1000.0,
        "stop_reason": STOP_REASONS.get(finish or "", "userStopped"),
    }


def _check_response_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in {"json_schema", "text"}:
        raise _plain(400, JSON_OBJECT_MESSAGE)
    if fmt["type"] == "json_schema":
        schema = fmt.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
            raise _plain(400, "'response_format.json_schema.schema' must be an object")


async def _read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except json.JSONDecodeError as exc:
        raise _plain(400, f"Received request for {request.path} with invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _plain(400, f"Received request for {request.path} with a body that is not a JSON object")
    return body


def make_app(config: EmulatorConfig) -> web.Application:
    emu = Emulator(config)

    # -- LM Studio: greeting and listings -------------------------------------------------------
    async def greeting(_: web.Request) -> web.Response:
        return web.json_response({"lmstudio": True})

    async def models_v1_native(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "models": [
                    spec.v1_native(
                        [(i.id, i.context_length) for i in emu.instances if i.key == key], emu.config.max_predictions
                    )
                    for key, spec in emu.catalogue.items()
                ]
            }
        )

    async def models_v0(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [spec.v0_legacy(bool(emu.loaded_ids(key))) for key, spec in emu.catalogue.items()],
            }
        )

    async def model_v0_one(request: web.Request) -> web.Response:
        key = request.path.removeprefix("/api/v0/models/")
        spec = emu.catalogue.get(key)
        if spec is None:
            raise emu._not_found(key)
        return web.json_response(spec.v0_legacy(bool(emu.loaded_ids(key))))

    async def models_openai(_: web.Request) -> web.Response:
        # With JIT loading on, LM Studio lists every downloaded model here; with it off, the loaded ones.
        ids = list(emu.catalogue) if emu.knobs.jit else [i.id for i in emu.instances]
        return web.json_response(
            {"data": [{"id": i, "object": "model", "owned_by": "organization_owner"} for i in ids], "object": "list"}
        )

    # -- LM Studio: load and unload ----------------------------------------------------------------
    async def load(request: web.Request) -> web.Response:
        body = await _read_json(request)
        key = body.get("model")
        if not isinstance(key, str) or not key:
            raise _openai_error(400, "Required", code="missing_required_parameter", param="model")
        spec = emu.catalogue.get(key)
        if spec is None:
            raise emu._not_found(key)
        requested = body.get("config") or {}
        context_length = requested.get("context_length") if isinstance(requested, dict) else None
        if not isinstance(context_length, int) or context_length <= 0:
            context_length = None
        started = time.monotonic()
        iid = await emu.load(spec, jit=False, context_length=context_length)
        config = spec.instance_config(context_length, emu.config.max_predictions)
        if spec.is_llm:
            config["num_experts"] = 0
        return web.json_response(
            {"model_instance_id": iid, "config": config, "load_time_seconds": round(time.monotonic() - started, 3)}
        )

    async def unload(request: web.Request) -> web.Response:
        body = await _read_json(request)
        iid = body.get("instance_id")
        if not isinstance(iid, str) or not iid:
            raise _openai_error(400, "Required", code="missing_required_parameter", param="instance_id")
        if not any(i.id == iid for i in emu.instances):
            raise _openai_error(
                404, f'No loaded model instance with identifier "{iid}".', code="model_not_found", param="instance_id"
            )
        emu.instances = [i for i in emu.instances if i.id != iid]
        emu.counters["unloads"] += 1
        return web.json_response({"instance_id": iid})

    # -- LM Studio: completions ----------------------------------------------------------------------
    def completion_handler(kind: str, *, v0: bool):
        upstream_path = "chat/completions" if kind == "chat" else "completions"
        object_name = "chat.completion" if kind == "chat" else "text_completion"
        id_prefix = "chatcmpl-" if kind == "chat" else "cmpl-"

        async def handler(request: web.Request) -> web.StreamResponse:
            body = await _read_json(request)
            if kind == "chat" and not isinstance(body.get("messages"), list):
                raise _plain(400, "'messages' field is required and must be an array")
            if kind == "text" and not isinstance(body.get("prompt"), (str, list)):
                raise _plain(400, "'prompt' field is required")
            _check_response_format(body)
            requested = body.get("model")
            spec, answered, substituted = await emu.resolve(requested if isinstance(requested, str) else None)
            if substituted:
                emu.counters["substitutions"] += 1
            if emu.knobs.crashed:
                emu.counters["crashed_answers"] += 1
                raise _plain(400, emu.knobs.crash_message)
            ubody = await emu.upstream_body(body)
            if body.get("stream"):
                return await stream(request, ubody, upstream_path, answered, id_prefix)
            async with emu.prediction():
                status, data = await emu.upstream_post(upstream_path, ubody)
            if status != 200:
                return web.json_response(data, status=status)
            timings = data.pop("timings", None)  # llama-server's; LM Studio has `stats` (on /api/v0) instead
            data.update(id=_new_id(id_prefix), object=object_name, model=answered)
            data["system_fingerprint"] = answered
            if v0:
                data["stats"] = _v0_stats(timings, (data.get("choices") or [{}])[0].get("finish_reason"))
                data["model_info"] = spec.model_info()
                data["runtime"] = dict(RUNTIME)
            return web.json_response(data)

        return handler

    async def stream(
        request: web.Request,
        ubody: dict[str, Any],
        upstream_path: str,
        answered: str,
        id_prefix: str,
    ) -> web.StreamResponse:
        cid = _new_id(id_prefix)
        knobs = emu.knobs
        cut_after = knobs.cut_stream_after_chunks
        if cut_after is not None and knobs.cut_stream_times is not None and emu.cuts_done >= knobs.cut_stream_times:
            cut_after = None
        assert emu.session is not None
        async with emu.prediction():
            emu.counters["upstream_calls"] += 1
            async with emu.session.post(f"{emu.config.upstream}/{upstream_path}", json=ubody) as up:
                if up.status != 200:
                    return web.json_response(_json_body(await up.text()), status=up.status)
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await resp.prepare(request)
                forwarded = 0
                try:
                    async for raw in up.content:
                        line = raw.decode("utf-8", errors="replace").strip()
                        if not line.startswith("data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == "[DONE]":
                            break
                        chunk = json.loads(payload)
                        if cut_after is not None and forwarded >= cut_after:
                            emu.cuts_done += 1
                            emu.counters["cut_streams"] += 1
                            up.close()
                            return await _cut(request, resp, knobs.cut_stream_mode)
                        # llama-server's own timings go; its usage chunk (asked for with
                        # stream_options.include_usage, as from LM Studio) stays, with real counts.
                        chunk.pop("timings", None)
                        chunk.update(id=cid, model=answered, system_fingerprint=answered)
                        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        forwarded += 1
                    await resp.write(b"data: [DONE]\n\n")
                    await resp.write_eof()
                except (ConnectionResetError, aiohttp.ClientConnectionError):
                    log.info("stream to %s ended early", request.remote)
                return resp

    async def _cut(request: web.Request, resp: web.StreamResponse, mode: str) -> web.StreamResponse:
        if mode == "done":
            await resp.write(b"data: [DONE]\n\n")
        if mode == "abort":
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    # -- test control (not LM Studio) ------------------------------------------------------------
    async def admin_state(_: web.Request) -> web.Response:
        return web.json_response(emu.state())

    async def admin_stats(_: web.Request) -> web.Response:
        return web.json_response(emu.stats())

    async def admin_scenario(request: web.Request) -> web.Response:
        body = await _read_json(request)
        scenario = body.pop("scenario", None)
        try:
            if scenario is not None:
                emu.reset(scenario, counters=bool(body.pop("reset_counters", True)), **body)
            else:
                body.pop("reset_counters", None)
                emu.apply(**body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(emu.state())

    async def admin_reset(_: web.Request) -> web.Response:
        emu.reset()
        return web.json_response(emu.state())

    async def admin_reset_counters(_: web.Request) -> web.Response:
        emu.reset_counters()
        return web.json_response(emu.stats())

    routes: dict[tuple[str, str], Any] = {
        ("GET", "/lmstudio-greeting"): greeting,
        ("GET", "/api/v1/models"): models_v1_native,
        ("POST", "/api/v1/models/load"): load,
        ("POST", "/api/v1/models/unload"): unload,
        ("GET", "/api/v0/models"): models_v0,
        ("GET", "/v1/models"): models_openai,
        ("POST", "/v1/chat/completions"): completion_handler("chat", v0=False),
        ("POST", "/v1/completions"): completion_handler("text", v0=False),
        ("POST", "/api/v0/chat/completions"): completion_handler("chat", v0=True),
        ("POST", "/api/v0/completions"): completion_handler("text", v0=True),
    }
    admin_routes: dict[tuple[str, str], Any] = {
        ("GET", f"{ADMIN_PREFIX}/state"): admin_state,
        ("GET", f"{ADMIN_PREFIX}/stats"): admin_stats,
        ("POST", f"{ADMIN_PREFIX}/scenario"): admin_scenario,
        ("POST", f"{ADMIN_PREFIX}/reset"): admin_reset,
        ("POST", f"{ADMIN_PREFIX}/reset-counters"): admin_reset_counters,
    }

    def authorized(request: web.Request) -> None:
        token = emu.knobs.token
        if token is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        # LM Studio 0.4's body (seen in its server log): no `param`, type `invalid_request`.
        if scheme.lower() != "bearer" or not value.strip():
            emu.counters["unauthorized"] += 1
            raise ApiError(
                401, {"error": {"type": "invalid_request", "code": "invalid_api_key", "message": MISSING_TOKEN_MESSAGE}}
            )
        if not secrets.compare_digest(value.strip().encode(), token.encode()):
            emu.counters["unauthorized"] += 1
            raise ApiError(
                401, {"error": {"type": "invalid_request", "code": "invalid_api_key", "message": INVALID_TOKEN_MESSAGE}}
            )

    async def dispatch(request: web.Request) -> web.StreamResponse:
        key = (request.method, request.path)
        if request.path.startswith(ADMIN_PREFIX + "/"):
            handler = admin_routes.get(key)
            if handler is None:
                return web.json_response({"error": f"unknown admin route {request.method} {request.path}"}, status=404)
            return await handler(request)
        emu.requests[f"{request.method} {request.path}"] += 1
        try:
            # The greeting is how LM Studio's own CLI and SDK find the server, before any token is known.
            if key != ("GET", "/lmstudio-greeting"):
                authorized(request)
            handler = routes.get(key)
            if handler is None and request.method == "GET" and request.path.startswith("/api/v0/models/"):
                handler = model_v0_one
            if handler is None:
                # LM Studio's real answer to an unknown route: HTTP 200 with an error body.
                emu.counters["error:unexpected_endpoint"] += 1
                return web.json_response({"error": f"Unexpected endpoint or method. ({request.method} {request.path})"})
            return await handler(request)
        except ApiError as exc:
            err = exc.body.get("error")
            emu.counters["error:" + (err.get("code") or "error") if isinstance(err, dict) else "error:plain"] += 1
            return exc.response()
        except (TimeoutError, aiohttp.ClientError) as exc:  # the emulator's own fault, not LM Studio's
            emu.counters["error:upstream"] += 1
            return web.json_response({"error": f"emulator: upstream {emu.config.upstream} failed: {exc!r}"}, status=502)

    async def on_startup(_: web.Application) -> None:
        emu.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600, sock_connect=10))
        with contextlib.suppress(Exception):
            await emu.ensure_upstream_model()

    async def on_cleanup(_: web.Application) -> None:
        if emu.session is not None:
            await emu.session.close()

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app["emulator"] = emu
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
