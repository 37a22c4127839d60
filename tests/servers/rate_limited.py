"""An OpenAI-compatible server that enforces requests- and tokens-per-minute as OpenAI does, and says so.

Each dimension is a token bucket refilled at `limit / 60` per second up to `burst_s` seconds' worth (1,200
requests a minute with 5 s of burst holds 100). A request costs 1 request and, in tokens, its prompt
(characters / 4, OpenAI's rule of thumb) plus its `max_tokens`, taken when it arrives. Every answer carries
OpenAI's headers: `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`,
`x-ratelimit-reset-requests` (a Go duration such as `1s`, `6m0s`, `20ms`: until the bucket is full) and the
same three for `-tokens`. A request that does not fit is answered at once with 429, an OpenAI error object,
`retry-after` (whole seconds, rounded up) and `retry-after-ms`, and still costs one request (OpenAI counts
refused requests against the limit too). Accepted ones are answered after `latency_ms`.

Test control, apart from the API: `GET /stats` (counters, and per second since the first request the
answers and the 429s), `POST /admin/limits {"rpm", "tpm", "burst_s", "latency_ms"}` (new limits, full
buckets, counters reset).

    python -m tests.servers.rate_limited --port 8091 --rpm 1200 --tpm 120000 --burst-s 5 --latency-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import defaultdict
from typing import Any

from aiohttp import web

from tests.servers.fixed_latency import _answer, serve


def go_duration(seconds: float) -> str:
    """OpenAI's reset format (Go's time.Duration): `20ms` below a second, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


class Bucket:
    """`limit` per minute, refilled continuously, holding at most `burst_s` seconds' worth."""

    def __init__(self, limit: float, burst_s: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.cap = self.rate * burst_s
        self.level = self.cap
        self.at = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.cap, self.level + self.rate * (now - self.at))
        self.at = now

    def wait_for(self, cost: float) -> float:
        return max(0.0, (cost - self.level) / self.rate)

    def headers(self, name: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{name}": str(int(self.limit)),
            f"x-ratelimit-remaining-{name}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{name}": go_duration((self.cap - self.level) / self.rate),
        }


class Limits:
    def __init__(self, rpm: float, tpm: float, burst_s: float, latency_s: float) -> None:
        self.requests = Bucket(rpm, burst_s)
        self.tokens = Bucket(tpm, burst_s)
        self.latency_s = latency_s
        self.first: float | None = None
        self.counters: dict[str, Any] = {
            "rpm": rpm,
            "tpm": tpm,
            "burst_s": burst_s,
            "latency_ms": latency_s * 1000.0,
            "chat": 0,
            "rate_limited": 0,
            "in_flight": 0,
            "max_in_flight": 0,
            "tokens_charged": 0,
        }
        # Second since the first request -> [answered, refused with 429].
        self.per_second: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])

    def headers(self) -> dict[str, str]:
        now = time.monotonic()
        self.requests.refill(now)
        self.tokens.refill(now)
        return {**self.requests.headers("requests"), **self.tokens.headers("tokens")}

    def admit(self, cost_tokens: float) -> float | None:
        """None: admitted (charged); else the seconds until this request would fit."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.requests.refill(now)
        self.tokens.refill(now)
        wait = max(self.requests.wait_for(1.0), self.tokens.wait_for(cost_tokens))
        if self.requests.level >= 1.0:
            self.requests.level -= 1.0  # a refused request counts too
        if wait > 0:
            return wait
        self.tokens.level -= cost_tokens
        self.counters["tokens_charged"] += cost_tokens
        return None

    def second(self) -> list[int]:
        return self.per_second[int(time.monotonic() - (self.first or time.monotonic()))]


def _cost(body: dict[str, Any]) -> int:
    chars = sum(len(m.get("content") or "") for m in body.get("messages", []) if isinstance(m.get("content"), str))
    return math.ceil(chars / 4) + int(body.get("max_tokens") or 0)


def make_app(rpm: float, tpm: float, burst_s: float, latency_s: float, model: str) -> web.Application:
    state = {"limits": Limits(rpm, tpm, burst_s, latency_s)}

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        limits: Limits = state["limits"]
        c = limits.counters
        wait = limits.admit(_cost(body))
        if wait is not None:
            c["rate_limited"] += 1
            limits.second()[1] += 1
            headers = {
                **limits.headers(),
                "retry-after": str(math.ceil(wait)),
                "retry-after-ms": str(round(wait * 1000)),
            }
            error = {
                "message": "Rate limit reached for requests (test server). Please try again later.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
            return web.json_response({"error": error}, status=429, headers=headers)
        c["in_flight"] += 1
        c["max_in_flight"] = max(c["max_in_flight"], c["in_flight"])
        try:
            await asyncio.sleep(limits.latency_s)
        finally:
            c["in_flight"] -= 1
        c["chat"] += 1
        limits.second()[0] += 1
        return web.json_response(
            {
                "id": f"chatcmpl-{c['chat']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": _answer(body)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 60, "completion_tokens": 30, "total_tokens": 90},
            },
            headers=limits.headers(),
        )

    async def stats(_: web.Request) -> web.Response:
        limits: Limits = state["limits"]
        seconds = sorted(limits.per_second.items())
        return web.json_response({**limits.counters, "per_second": [[s, ok, refused] for s, (ok, refused) in seconds]})

    async def set_limits(request: web.Request) -> web.Response:
        body = await request.json()
        old: Limits = state["limits"]
        state["limits"] = Limits(
            float(body.get("rpm", old.requests.limit)),
            float(body.get("tpm", old.tokens.limit)),
            float(body.get("burst_s", old.counters["burst_s"])),
            float(body.get("latency_ms", old.latency_s * 1000.0)) / 1000.0,
        )
        return web.json_response(state["limits"].counters)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/admin/limits", set_limits)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rpm", type=float, default=1200.0)
    parser.add_argument("--tpm", type=float, default=120000.0)
    parser.add_argument("--burst-s", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--model", default="remote-model")
    args = parser.parse_args()
    serve(make_app(args.rpm, args.tpm, args.burst_s, args.latency_ms / 1000.0, args.model), args.host, args.port)


if __name__ == "__main__":
    main()
