"""Run the LM Studio emulator in front of llama.cpp's llama-server.

    python -m tests.lmstudio_emulator --upstream http://127.0.0.1:8000/v1 --port 1234 \
        [--token T] [--jit-load-seconds 2] [--scenario loaded] [--jit on|off] [--model KEY]
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from tests.lmstudio_emulator.app import EmulatorConfig, make_app
from tests.lmstudio_emulator.catalogue import DEFAULT_SCENARIO, PRIMARY_MODEL, SCENARIOS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lmstudio_emulator",
        description="LM Studio's API emulated in front of a real llama.cpp llama-server "
        "(generation is forwarded to it).",
    )
    parser.add_argument(
        "--upstream",
        required=True,
        help="the upstream llama-server's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
    )
    parser.add_argument(
        "--upstream-model", default=None, help="the upstream's model name (default: the first of its /v1/models)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1234)
    parser.add_argument("--token", default=None, help="require this API token (Authorization: Bearer <token>)")
    parser.add_argument(
        "--jit-load-seconds",
        type=float,
        default=2.0,
        help="how long a just-in-time load (and POST /api/v1/models/load) takes",
    )
    parser.add_argument(
        "--scenario",
        "--catalogue",
        dest="scenario",
        default=DEFAULT_SCENARIO,
        choices=sorted(SCENARIOS),
        help="which downloaded models are loaded at start (and on reset)",
    )
    parser.add_argument(
        "--jit", choices=["on", "off"], default=None, help="just-in-time loading (default: the scenario's)"
    )
    parser.add_argument("--model", default=PRIMARY_MODEL, help="the key of the configured (primary) model")
    parser.add_argument(
        "--max-predictions",
        type=int,
        default=4,
        help="predictions at once, the rest queue (give the upstream llama-server as many --parallel slots)",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = EmulatorConfig(
        upstream=args.upstream,
        upstream_model=args.upstream_model,
        scenario=args.scenario,
        token=args.token,
        jit_load_seconds=args.jit_load_seconds,
        jit=None if args.jit is None else args.jit == "on",
        max_predictions=args.max_predictions,
        primary_model=args.model,
    )
    print(
        f"LM Studio emulator on http://{args.host}:{args.port} (scenario {args.scenario}) -> {config.upstream}",
        flush=True,
    )
    web.run_app(make_app(config), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
