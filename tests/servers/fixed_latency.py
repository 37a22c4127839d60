"""An OpenAI-compatible server that answers every chat completion after a fixed delay.

It stands in for a remote API (OpenAI, OpenRouter, vLLM) in routing tests and benchmarks:
answers are valid noun-insight JSON, so the pipeline's whole path runs. It runs in its own
process so that it never competes with the client under test for the GIL.

    python -m tests.servers.fixed_latency --port 8089 --latency-ms 200 [--model remote-model]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

from aiohttp import web

_STRONG = re.compile(r"Strong's (H\d+)")


def _answer(body: dict) -> str:
    text = " ".join(m.get("content", "") for m in body.get("messages", []))
    match = _STRONG.search(text)
    noun = match.group(1) if match else "the noun"
    return json.dumps(
        {
            "insight": f"{noun} names a concrete thing of daily life in the Hebrew Bible.",
            "themes": ["lexicon", "daily life"],
            "confidence": 0.5,
        }
    )


def make_app(latency_s: float, model: str, api_key: str | None) -> web.Application:
    # chat: answered so far; in_flight / max_in_flight: concurrent chat requests now / at most since a reset.
    counters = {"chat": 0, "in_flight": 0, "max_in_flight": 0}
    # Answers by the Strong's id their prompt names: what a crash test counts as paid (and paid twice).
    by_noun: dict[str, int] = {}

    def authorized(request: web.Request) -> bool:
        return api_key is None or request.headers.get("Authorization") == f"Bearer {api_key}"

    async def models(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response(
                {"error": {"message": "invalid api key", "type": "invalid_request_error"}}, status=401
            )
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]})

    async def chat(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.json()
        counters["in_flight"] += 1
        counters["max_in_flight"] = max(counters["max_in_flight"], counters["in_flight"])
        try:
            await asyncio.sleep(latency_s)
        finally:
            counters["in_flight"] -= 1
        counters["chat"] += 1
        content = _answer(body)
        match = _STRONG.search(" ".join(m.get("content", "") for m in body.get("messages", [])))
        if match:
            by_noun[match.group(1)] = by_noun.get(match.group(1), 0) + 1
        return web.json_response(
            {
                "id": f"chatcmpl-{counters['chat']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 60, "completion_tokens": 30, "total_tokens": 90},
            }
        )

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counters)

    async def nouns(_: web.Request) -> web.Response:
        return web.json_response(by_noun)

    async def reset_peak(_: web.Request) -> web.Response:
        counters["max_in_flight"] = counters["in_flight"]
        return web.json_response(counters)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_get("/stats/nouns", nouns)
    app.router.add_post("/stats/reset-peak", reset_peak)
    return app


def serve(app: web.Application, host: str, port: int) -> None:
    """Run `app` on host:port until stopped (uvloop when installed; no access log; a deep accept backlog for
    the 64-in-flight benchmarks). The other test servers of tests/servers/ run through this too."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host=host, port=port, access_log=None, print=None, backlog=1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--model", default="remote-model")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    serve(make_app(args.latency_ms / 1000.0, args.model, args.api_key), args.host, args.port)


if __name__ == "__main__":
    main()
