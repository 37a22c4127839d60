"""An OpenAI-compatible server whose capacity is hidden: it serves `slots` requests at a time, each in a
fixed service time, and queues the rest (as llama.cpp's server does past its `--parallel` slots), saying
nothing of either. The limiter under test must find `slots` from latency alone.

Answers are valid noun-insight JSON (the fixed-latency server's). Test control, apart from the API:
`GET /stats` (counters), `POST /admin/capacity {"slots": N, "service_ms": S}` (a new capacity, counters
reset; requests already queued finish under the old one).

    python -m tests.servers.hidden_capacity --port 8090 --slots 4 --service-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiohttp import web

from tests.servers.fixed_latency import _answer, serve


class Capacity:
    """The hidden slots, and what happened: `chat` answered, `queued` requests that found every slot busy,
    `max_in_flight` / `max_queued` the most at once, `in_service` now."""

    def __init__(self, slots: int, service_s: float) -> None:
        self.set(slots, service_s)

    def set(self, slots: int, service_s: float) -> None:
        self.slots, self.service_s = slots, service_s
        self.semaphore = asyncio.Semaphore(slots)
        self.counters: dict[str, Any] = {
            "slots": slots,
            "service_ms": service_s * 1000.0,
            "chat": 0,
            "queued": 0,
            "in_flight": 0,
            "max_in_flight": 0,
            "waiting": 0,
            "max_queued": 0,
        }

    async def serve(self) -> None:
        c, semaphore, service_s = self.counters, self.semaphore, self.service_s
        c["in_flight"] += 1
        c["max_in_flight"] = max(c["max_in_flight"], c["in_flight"])
        try:
            if semaphore.locked():
                c["queued"] += 1
            c["waiting"] += 1
            c["max_queued"] = max(c["max_queued"], c["waiting"] - self.slots)
            async with semaphore:
                c["waiting"] -= 1
                await asyncio.sleep(service_s)
            c["chat"] += 1
        finally:
            c["in_flight"] -= 1


def make_app(slots: int, service_s: float, model: str) -> web.Application:
    capacity: dict[str, Capacity] = {}

    def current() -> Capacity:
        if "c" not in capacity:  # the semaphore belongs to the running loop
            capacity["c"] = Capacity(slots, service_s)
        return capacity["c"]

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        cap = current()
        await cap.serve()
        return web.json_response(
            {
                "id": f"chatcmpl-{cap.counters['chat']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": _answer(body)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 60, "completion_tokens": 30, "total_tokens": 90},
            }
        )

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(current().counters)

    async def set_capacity(request: web.Request) -> web.Response:
        body = await request.json()
        cap = current()
        cap.set(int(body.get("slots", cap.slots)), float(body.get("service_ms", cap.service_s * 1000.0)) / 1000.0)
        return web.json_response(cap.counters)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/admin/capacity", set_capacity)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=200.0)
    parser.add_argument("--model", default="remote-model")
    args = parser.parse_args()
    serve(make_app(args.slots, args.service_ms / 1000.0, args.model), args.host, args.port)


if __name__ == "__main__":
    main()
