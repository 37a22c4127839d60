"""The fault server's own behaviours, checked with raw clients (httpx, aiohttp, a bare socket).

Each test starts its own server so nothing here depends on the code under test elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from tests.servers import fault_server as fs
from tests.servers.fault_server import (
    LOADING_MODEL_BODY,
    FaultServer,
    Reply,
    chat_chunks,
    chat_completion,
    disconnect,
    error_in_200,
    hang,
    json_reply,
    loading_until,
    model_loading,
    openai_models,
    sse,
    trickle,
    truncated,
)

CHAT = "POST /v1/chat/completions"
ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer().start()
    try:
        yield s
    finally:
        s.stop()


def handler_threads() -> set[threading.Thread]:
    """The server's live per-connection threads (ThreadingMixIn names them after their target)."""
    return {t for t in threading.enumerate() if "process_request_thread" in t.name}


def wait_for(predicate, timeout: float = 1.5) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---------------------------------------------------------------- trickle


def test_trickle_sends_headers_at_once_then_one_byte_per_interval(server: FaultServer) -> None:
    body = b'{"a": 12345}'  # 12 bytes
    interval, first = 0.05, 4
    server.script(CHAT, trickle(body, byte_interval_s=interval, first_bytes=first))
    with httpx.Client(timeout=5) as client:
        start = time.monotonic()
        with client.stream("POST", f"{server.base_url}/chat/completions", json=ASK) as response:
            headers_after = time.monotonic() - start
            assert response.status_code == 200
            assert response.headers["content-length"] == str(len(body))
            received = response.read()
        total = time.monotonic() - start
    assert received == body
    assert headers_after < 0.2  # the body alone takes 0.4 s
    assert total >= (len(body) - first) * interval


def test_trickle_stops_when_the_client_goes_away(server: FaultServer, capfd: pytest.CaptureFixture[str]) -> None:
    before = handler_threads()
    server.script("POST /slow", trickle(b"x" * 200, byte_interval_s=0.02))
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    ours = handler_threads() - before
    assert ours
    # Close with RST so the server's next write fails at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # 200 bytes at 20 ms would take 4 s; the handler must give up well before, quietly.
    assert wait_for(lambda: not any(t.is_alive() for t in ours), timeout=1.0)
    assert "Traceback" not in capfd.readouterr().err


def test_trickle_gives_up_after_max_hang_seconds(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "MAX_HANG_SECONDS", 0.2)
    server.script(CHAT, trickle(b"y" * 100, byte_interval_s=0.02))
    start = time.monotonic()
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.RemoteProtocolError):
        client.post(f"{server.base_url}/chat/completions", json=ASK)
    assert time.monotonic() - start < 1.0


def test_trickle_rejects_negative_intervals() -> None:
    with pytest.raises(ValueError):
        trickle(b"x", byte_interval_s=-1)


# ---------------------------------------------------------------- keep-alive


def test_keepalive_reuse_without_the_drop_option(server: FaultServer) -> None:
    server.script(CHAT, json_reply(chat_completion("ok")))

    async def two_posts() -> list[int]:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            statuses = []
            for _ in range(2):
                async with session.post(f"{server.base_url}/chat/completions", json=ASK) as r:
                    await r.read()
                    statuses.append(r.status)
            return statuses

    assert asyncio.run(two_posts()) == [200, 200]
    assert server.dropped == 0 and len(server.requests) == 2


def test_keepalive_drop_aiohttp() -> None:
    server = FaultServer(keepalive_drop=True).start()
    try:
        server.script(CHAT, json_reply(chat_completion("first")), json_reply(chat_completion("second")))

        async def posts() -> tuple[str, BaseException, str]:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                url = f"{server.base_url}/chat/completions"
                async with session.post(url, json=ASK) as r:
                    first = (await r.json())["choices"][0]["message"]["content"]
                with pytest.raises(aiohttp.ServerDisconnectedError) as err:
                    async with session.post(url, json=ASK) as r:
                        await r.read()
                # The dropped connection is gone: the next request opens a fresh one and is answered.
                async with session.post(url, json=ASK) as r:
                    third = (await r.json())["choices"][0]["message"]["content"]
                return first, err.value, third

        first, _, third = asyncio.run(posts())
        assert (first, third) == ("first", "second")  # the dropped request used no script
        assert server.dropped == 1
        assert len(server.requests) == 2 and len(server.dropped_requests) == 1
        assert server.dropped_requests[0].json() == ASK
    finally:
        server.stop()


def test_keepalive_drop_httpx(server: FaultServer) -> None:
    server.drop_reused_connections()
    server.script("GET /v1/models", json_reply(openai_models(["m"])))
    with httpx.Client(timeout=2) as client:
        assert client.get(f"{server.base_url}/models").status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            client.post(f"{server.base_url}/models", json=ASK)
        # A fresh connection's first request is answered.
        assert client.get(f"{server.base_url}/models").status_code == 200
    assert server.dropped == 1 and [r.method for r in server.requests] == ["GET", "GET"]


CUTS: list[tuple[str, Reply, type[Exception]]] = [
    ("disconnect", disconnect(), httpx.RemoteProtocolError),
    ("truncated", truncated(chat_completion("cut")), httpx.RemoteProtocolError),
    ("hang", hang(), httpx.ReadTimeout),
]


@pytest.mark.parametrize(("reply", "error"), [c[1:] for c in CUTS], ids=[c[0] for c in CUTS])
def test_cut_answers_close_the_keepalive_connection(server: FaultServer, reply: Reply, error: type[Exception]) -> None:
    server.script(CHAT, reply, json_reply(chat_completion("after")))
    with httpx.Client(timeout=0.3) as client:
        url = f"{server.base_url}/chat/completions"
        with pytest.raises(error):
            client.post(url, json=ASK)
        assert client.post(url, json=ASK).json()["choices"][0]["message"]["content"] == "after"


def test_stream_then_keepalive_request(server: FaultServer) -> None:
    server.script(CHAT, sse(chat_chunks(["a", "b"])), json_reply(chat_completion("after")))
    with httpx.Client(timeout=2) as client:
        url = f"{server.base_url}/chat/completions"
        with client.stream("POST", url, json=ASK) as r:
            assert r.headers["connection"] == "close"
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and len(lines) == 5
        assert client.post(url, json=ASK).json()["choices"][0]["message"]["content"] == "after"


# ---------------------------------------------------------------- loading


def test_loading_window_answers_503_everywhere_then_the_scripts(server: FaultServer) -> None:
    server.script(CHAT, json_reply(chat_completion("one")), json_reply(chat_completion("two")))
    server.script("GET /v1/models", json_reply(openai_models(["m"])))
    server.loading_for(0.3)
    with httpx.Client(timeout=2) as client:
        for method, path in [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]:
            r = client.request(method, server.root + path, json=ASK if method == "POST" else None)
            assert r.status_code == 503 and r.content == LOADING_MODEL_BODY
            assert r.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        assert server.loading
        assert wait_for(lambda: not server.loading, timeout=1.0)
        health = client.get(f"{server.root}/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert client.get(f"{server.root}/v1/models").json()["data"][0]["id"] == "m"
        # The loading answers used no script.
        assert (
            client.post(f"{server.base_url}/chat/completions", json=ASK).json()["choices"][0]["message"]["content"]
            == "one"
        )
    assert len(server.requests) == 6


def test_loading_until_in_a_script(server: FaultServer) -> None:
    ready = time.monotonic() + 0.2
    server.script(CHAT, loading_until(ready, json_reply(chat_completion("a"))), json_reply(chat_completion("b")))
    url = f"{server.base_url}/chat/completions"
    with httpx.Client(timeout=2) as client:
        assert [client.post(url, json=ASK).status_code for _ in range(2)] == [503, 503]
        time.sleep(max(0.0, ready - time.monotonic()) + 0.02)
        contents = [client.post(url, json=ASK).json()["choices"][0]["message"]["content"] for _ in range(3)]
    assert contents == ["a", "b", "b"]


def test_model_loading_reply() -> None:
    r = model_loading()
    assert r.status == 503 and json.loads(r.body)["error"]["message"] == "Loading model"


# ---------------------------------------------------------------- payloads


def test_error_in_200(server: FaultServer) -> None:
    server.script(CHAT, error_in_200(502))
    r = httpx.post(f"{server.base_url}/chat/completions", json=ASK, timeout=2)
    assert r.status_code == 200
    assert r.json() == {
        "error": {"message": "Provider returned error", "code": 502, "metadata": {"provider_name": "X"}}
    }


def test_chat_completion_reasoning_shapes() -> None:
    plain = chat_completion('<think>draft {"a":1}</think>{"a":2}')["choices"][0]
    assert plain["message"] == {"role": "assistant", "content": '<think>draft {"a":1}</think>{"a":2}'}
    assert plain["finish_reason"] == "stop"

    spent = chat_completion("", reasoning_content="thinking...", finish_reason="length")["choices"][0]
    assert spent["message"]["content"] == "" and spent["message"]["reasoning_content"] == "thinking..."
    assert spent["finish_reason"] == "length" and "reasoning" not in spent["message"]

    routed = chat_completion('{"a":2}', reasoning="why")["choices"][0]["message"]
    assert routed["reasoning"] == "why" and "reasoning_content" not in routed

    parts = [{"type": "text", "text": '{"a":2}'}]
    assert chat_completion(parts)["choices"][0]["message"]["content"] == parts
    assert chat_completion(None)["choices"][0]["message"]["content"] is None
