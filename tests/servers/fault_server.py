"""A fault-injecting OpenAI-compatible / LM Studio server on loopback, scripted per test.

Real sockets, real HTTP: the clients under test cannot tell it from a server that misbehaves.
Each route answers from a script (a sequence of `Reply`s; the last one repeats). Payload
builders follow LM Studio's documented formats: `/api/v1/models` (0.4 native, loaded_instances),
`/api/v0/models` (legacy, state), `/v1/models`, its error objects, and server-sent events.

The handler speaks HTTP/1.1 with keep-alive: every complete answer carries a Content-Length, and
every action that cuts an answer short (hang, disconnect, truncate, stream, an aborted trickle)
closes the connection. Server-level faults, beside the per-route scripts:

- `FaultServer(keepalive_drop=True)` / `drop_reused_connections()`: llama.cpp dropping idle
  keep-alive connections (the second request on a connection is read, then the socket closed).
- `loading_for(seconds)`: llama.cpp's 503 "Loading model" on every route while the model loads.

    server = FaultServer().start()
    server.script("POST /v1/chat/completions", rate_limited(retry_after=1), json_reply(chat_completion("hi")))
    ... server.base_url ...
    server.stop()
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Action = Literal["respond", "hang", "truncate", "disconnect", "stream", "trickle", "loading"]
# A hung handler gives up after this long even if the test forgets to stop the server.
MAX_HANG_SECONDS = 60.0


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    action: Action = "respond"
    # truncate: how many bytes the Content-Length promises beyond what is sent.
    missing_bytes: int = 0
    # stream: the events, each already "data: ..." framed.
    events: tuple[bytes, ...] = ()
    # trickle: seconds between single body bytes, and how many bytes go out at once first.
    byte_interval_s: float = 0.0
    first_bytes: int = 0
    # loading: `loading_reply` answers until time.monotonic() reaches `deadline`, then `then` does.
    deadline: float = 0.0
    then: Reply | None = None


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# ---------------------------------------------------------------- replies


def json_reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status=status,
        body=json.dumps(payload).encode(),
        headers=(("Content-Type", "application/json"), *(headers or {}).items()),
    )


def raw_reply(body: bytes, status: int = 200, content_type: str = "application/json") -> Reply:
    return Reply(status=status, body=body, headers=(("Content-Type", content_type),))


def hang() -> Reply:
    """Accept the request, never answer."""
    return Reply(action="hang")


def disconnect() -> Reply:
    """Read the request, then close the connection without a byte of answer."""
    return Reply(action="disconnect")


def truncated(payload: Any, missing_bytes: int = 64) -> Reply:
    """Promise more bytes in Content-Length than are sent, then close."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Reply(
        status=200,
        body=body,
        headers=(("Content-Type", "application/json"),),
        action="truncate",
        missing_bytes=missing_bytes,
    )


def trickle(payload: Any, *, byte_interval_s: float, first_bytes: int = 0, status: int = 200) -> Reply:
    """Status line and headers (with the full Content-Length) at once, then the body byte by byte.

    Reproduces a slow server or proxy that starts answering and then stalls between bytes: a
    CPU-bound llama.cpp, a congested tunnel. A client with a connect/first-byte timeout but no
    total deadline reads it for ever. `first_bytes` go out at once, then one byte every
    `byte_interval_s` seconds. The server gives up (closes) when the client goes away, when the
    server stops, or after MAX_HANG_SECONDS.
    """
    if byte_interval_s < 0 or first_bytes < 0:
        raise ValueError("byte_interval_s and first_bytes must not be negative")
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Reply(
        status=status,
        body=body,
        headers=(("Content-Type", "application/json"),),
        action="trickle",
        byte_interval_s=byte_interval_s,
        first_bytes=first_bytes,
    )


LOADING_MODEL_BODY = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'


def model_loading() -> Reply:
    """llama.cpp's server (and servers built on it) while the model loads: 503 on every route."""
    return raw_reply(LOADING_MODEL_BODY, status=503, content_type="application/json; charset=utf-8")


def llama_health_ok() -> Reply:
    """llama.cpp's `GET /health` once the model is loaded."""
    return raw_reply(b'{"status":"ok"}', content_type="application/json; charset=utf-8")


def loading_until(deadline_monotonic: float, then: Reply) -> Reply:
    """`model_loading()` until `time.monotonic()` reaches the deadline, then `then`.

    Reproduces a llama.cpp server started moments ago on one route. In a script it is not used
    up while loading: `script(route, loading_until(t, a), b)` answers 503 until t, then a, then b.
    For every route at once use `FaultServer.loading_for(seconds)`.
    """
    if then.action == "loading":
        raise ValueError("`then` must be a plain reply")
    return Reply(action="loading", deadline=deadline_monotonic, then=then)


def error_in_200(code: int, message: str = "Provider returned error", *, provider_name: str = "X") -> Reply:
    """OpenRouter: the upstream provider failed, yet the answer is HTTP 200 with an `error` body."""
    return json_reply({"error": {"message": message, "code": code, "metadata": {"provider_name": provider_name}}})


def server_error(message: str = "Internal Server Error") -> Reply:
    return json_reply(
        {"error": {"message": message, "type": "internal_server_error", "param": None, "code": None}}, status=500
    )


def rate_limited(retry_after: float | None = 1, message: str = "Rate limit reached, slow down") -> Reply:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return json_reply(
        {"error": {"message": message, "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}},
        status=429,
        headers=headers,
    )


def unauthorized(echo_key: str | None = None) -> Reply:
    # OpenAI echoes (part of) the key it refused; a careless client would pass it on.
    shown = f": {echo_key}" if echo_key else ""
    return json_reply(
        {
            "error": {
                "message": f"Incorrect API key provided{shown}",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
        status=401,
    )


def no_models_loaded(status: int = 400) -> Reply:
    """LM Studio with nothing loaded (404 on 0.3.5, 400 since)."""
    return json_reply(
        {
            "error": {
                "message": "No models loaded. Please load a model in the developer page or use the `lms load` command.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found" if status == 404 else None,
            }
        },
        status=status,
    )


def model_not_found(model: str) -> Reply:
    return json_reply(
        {
            "error": {
                "message": f'Model "{model}" not found. Please check the model identifier.',
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        },
        status=404,
    )


def model_crashed() -> Reply:
    """LM Studio: a crashed model is a 400 whose `error` is a plain string."""
    return json_reply({"error": "The model has crashed without additional information. (Exit code: null)"}, status=400)


def bad_request(message: str = "'messages' field is required") -> Reply:
    return json_reply(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}, status=400
    )


def unknown_route(method: str, path: str) -> Reply:
    """LM Studio answers routes it does not know with HTTP 200 and an error in the body."""
    return json_reply({"error": f"Unexpected endpoint or method. ({method} {path})"}, status=200)


def json_object_rejected() -> Reply:
    """LM Studio refusing llama.cpp's response_format form."""
    return json_reply(
        {
            "error": {
                "message": "'response_format.type' must be 'json_schema' or 'text'",
                "type": "invalid_request_error",
                "param": "response_format",
                "code": None,
            }
        },
        status=400,
    )


def json_schema_rejected() -> Reply:
    """llama-cpp-python's server refusing the OpenAI form: a 500 that carries a validation message."""
    return server_error(
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
    )


def sse(chunks: list[dict[str, Any]], *, done: bool = True) -> Reply:
    events = tuple(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    if done:
        events += (b"data: [DONE]\n\n",)
    return Reply(action="stream", events=events, headers=(("Content-Type", "text/event-stream"),))


# ---------------------------------------------------------------- LM Studio / OpenAI payloads


def chat_completion(
    text: str | list[dict[str, Any]] | None,
    model: str = "qwen2.5-7b-instruct",
    *,
    prompt_tokens: int = 12,
    completion_tokens: int = 5,
    finish_reason: str | None = "stop",
    reasoning_content: str | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """A non-streamed chat completion; `text` is the message content as sent.

    Reasoning models answer in several shapes, all expressible here: thinking inline in the
    content (`"<think>draft</think>{...}"`), in `reasoning_content` (llama.cpp, DeepSeek, LM
    Studio with the reasoning parser), in `reasoning` (OpenRouter, Ollama), an empty content
    (`""`: every token spent on thinking, often with `finish_reason="length"`), `None`, or a
    list of content parts (`[{"type": "text", "text": ...}]`). The reasoning keys appear only
    when given.
    """
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning is not None:
        message["reasoning"] = reasoning
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": finish_reason,
                "message": message,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": model,
    }


def chat_chunks(
    pieces: list[str], model: str = "qwen2.5-7b-instruct", finish_reason: str | None = "stop"
) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    out = [chunk({"role": "assistant", "content": ""}, None)]
    out += [chunk({"content": p}, None) for p in pieces]
    if finish_reason is not None:
        out.append(chunk({}, finish_reason))
    return out


def openai_models(ids: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "organization_owner"} for i in ids]}


def lm_models_v0(models: dict[str, str], *, embeddings: tuple[str, ...] = ()) -> dict[str, Any]:
    """Legacy `/api/v0/models`: model id -> "loaded" | "not-loaded"."""
    data = [
        {
            "id": mid,
            "object": "model",
            "type": "llm",
            "publisher": "lmstudio-community",
            "arch": "qwen2",
            "compatibility_type": "gguf",
            "quantization": "Q4_K_M",
            "state": state,
            "max_context_length": 32768,
        }
        for mid, state in models.items()
    ]
    data += [
        {
            "id": e,
            "object": "model",
            "type": "embeddings",
            "publisher": "nomic-ai",
            "arch": "nomic-bert",
            "compatibility_type": "gguf",
            "quantization": "Q4_0",
            "state": "not-loaded",
            "max_context_length": 2048,
        }
        for e in embeddings
    ]
    return {"object": "list", "data": data}


def lm_models_v1(models: dict[str, bool]) -> dict[str, Any]:
    """LM Studio 0.4 `/api/v1/models`: model key -> loaded?"""

    def entry(key: str, loaded: bool) -> dict[str, Any]:
        return {
            "type": "llm",
            "publisher": "lmstudio-community",
            "key": key,
            "display_name": key,
            "architecture": "qwen2",
            "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.8},
            "size_bytes": 4_683_073_536,
            "params_string": "7B",
            "max_context_length": 32768,
            "format": "gguf",
            "capabilities": {"vision": False, "trained_for_tool_use": True},
            "loaded_instances": [{"id": key, "config": {"context_length": 4096}}] if loaded else [],
        }

    return {"models": [entry(k, v) for k, v in models.items()]}


# ---------------------------------------------------------------- the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the clients pool connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Requests answered on this connection (one handler instance per connection).
        self.answered = 0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request stderr lines
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        rec = Recorded(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body)
        if owner.keepalive_drop and self.answered:
            # The request was read in full, so closing sends FIN, not RST: the client reads EOF
            # where the status line should be ("Server disconnected without sending a response").
            owner._record_dropped(rec)
            self._drop()
            return
        self.answered += 1
        owner._record(rec)
        reply = owner._next_reply(f"{self.command} {path}")
        if reply.action == "hang":
            owner._stopping.wait(MAX_HANG_SECONDS)
            self._drop()
            return
        if reply.action == "disconnect":
            self._drop()
            return
        if reply.action == "stream":
            self.send_response(reply.status)
            for k, v in reply.headers:
                self.send_header(k, v)
            # No length and no chunking: the body ends when the connection closes, as a cut stream does.
            self.send_header("Connection", "close")
            self.end_headers()
            for event in reply.events:
                self.wfile.write(event)
                self.wfile.flush()
            self._drop()
            return
        if reply.action == "trickle":
            self._trickle(reply)
            return
        self.send_response(reply.status)
        for k, v in reply.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(reply.body) + reply.missing_bytes))
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()
        if reply.action == "truncate":
            self._drop()

    def _trickle(self, reply: Reply) -> None:
        stopping = self.server.owner._stopping
        give_up = time.monotonic() + MAX_HANG_SECONDS
        body = reply.body
        try:
            self.send_response(reply.status)
            for k, v in reply.headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = min(reply.first_bytes, len(body))
            if sent:
                self.wfile.write(body[:sent])
            while sent < len(body):
                if stopping.wait(reply.byte_interval_s) or time.monotonic() >= give_up:
                    self._drop()
                    return
                self.wfile.write(body[sent : sent + 1])
                sent += 1
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up: nothing more to send on this connection.
            self._drop()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultServer


@dataclass
class FaultServer:
    host: str = "127.0.0.1"
    # llama.cpp dropping idle keep-alive connections: each connection's first request is answered,
    # the next one on it is read and then the connection closed without an answer. See
    # `drop_reused_connections()`.
    keepalive_drop: bool = False
    # The requests answered (or hung on, cut, ...): dropped requests are NOT in here, they are in
    # `dropped_requests` (the real server never sees them as requests) and consume no script.
    requests: list[Recorded] = field(default_factory=list)
    dropped_requests: list[Recorded] = field(default_factory=list)
    _loading_deadline: float | None = None
    _scripts: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _httpd: _Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> FaultServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return int(self._httpd.server_address[1])

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def drop_reused_connections(self, on: bool = True) -> FaultServer:
        """Answer only the first request on each connection; close on the next (see `keepalive_drop`)."""
        self.keepalive_drop = on
        return self

    @property
    def dropped(self) -> int:
        """How many requests arrived on a reused connection and were dropped unanswered."""
        with self._lock:
            return len(self.dropped_requests)

    def loading_for(self, seconds: float) -> FaultServer:
        """Every route answers `model_loading()` (503) for `seconds` from now, then its script.

        Reproduces a llama.cpp server whose model is still loading: `/health`, `/v1/models` and the
        chat route alike. Loading answers consume no script; the requests are recorded. Unless
        `GET /health` is scripted already, it answers llama.cpp's `{"status":"ok"}` afterwards.
        """
        with self._lock:
            self._loading_deadline = time.monotonic() + seconds
            if "GET /health" not in self._scripts:
                self._scripts["GET /health"] = deque([llama_health_ok()])
        return self

    @property
    def loading(self) -> bool:
        """Whether the `loading_for` window is still open."""
        deadline = self._loading_deadline
        return deadline is not None and time.monotonic() < deadline

    def script(self, route: str, *replies: Reply) -> FaultServer:
        """`route` is "METHOD /path"; the replies answer in order, the last one for ever after."""
        if not replies:
            raise ValueError("script at least one reply")
        with self._lock:
            self._scripts[route] = deque(replies)
        return self

    def as_lm_studio(self, *, v1: dict[str, bool] | None = None, v0: dict[str, str] | None = None) -> FaultServer:
        """The model listings of an LM Studio (0.4 native API when `v1` is given, else legacy only)."""
        if v1 is not None:
            self.script("GET /api/v1/models", json_reply(lm_models_v1(v1)))
            ids = list(v1)
        else:
            self.script("GET /api/v1/models", unknown_route("GET", "/api/v1/models"))
            ids = list(v0 or {})
        if v0 is not None:
            self.script("GET /api/v0/models", json_reply(lm_models_v0(v0)))
        # With just-in-time loading on, /v1/models lists every downloaded model, loaded or not.
        self.script("GET /v1/models", json_reply(openai_models(ids)))
        return self

    def requests_to(self, route: str) -> list[Recorded]:
        method, path = route.split(" ", 1)
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _record_dropped(self, rec: Recorded) -> None:
        with self._lock:
            self.dropped_requests.append(rec)

    def _next_reply(self, route: str) -> Reply:
        if self.loading:
            return model_loading()
        with self._lock:
            queue = self._scripts.get(route)
            if not queue:
                # What llama-cpp-python's server (FastAPI) answers for a route it does not have.
                return json_reply({"detail": "Not Found"}, status=404)
            head = queue[0]
            if head.action == "loading":
                if time.monotonic() < head.deadline:
                    return model_loading()  # not used up while loading
                assert head.then is not None
                queue[0] = head = head.then
            return queue.popleft() if len(queue) > 1 else head
