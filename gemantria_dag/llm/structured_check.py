"""Does structured output work on this server and model? One tiny schema-constrained request, cached.

LM Studio broke `json_schema` output in several 2026 releases (empty content in 0.4.7, the JSON
wrapped inside the reasoning in 0.4.11-0.4.12, a stricter schema converter answering 400 "Unable
to generate parser" in 0.4.19). A server that answers its health probes can still fail every
enrichment call, so health asks once per (server, model, loaded instances): a request for
`{"ok": true}` under a one-field schema, `max_tokens` 24, temperature 0. The verdict is cached in
this process until the server's kind or its loaded models change; a probe that gets no answer in
time is "unknown" (not cached, not a failure: the next check asks again).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Literal

import httpx

from gemantria_dag.llm.errors import error_from_exception
from gemantria_dag.llm.reply import Failure, parse_chat_response
from gemantria_dag.llm.request import StructuredOutput, build_chat_payload, render_response_format

PROMPT = 'Reply with the JSON object {"ok": true} and nothing else.'
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
MAX_TOKENS = 24

Verdict = Literal["ok", "broken", "unknown"]


@dataclass(frozen=True, slots=True)
class StructuredCheck:
    """The verdict, why (for `broken`/`unknown`), and what the probe cost: ms, prompt and completion tokens."""

    verdict: Verdict
    reason: str | None
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False


_cache: dict[tuple[str, str, str], StructuredCheck] = {}
_lock = threading.Lock()


def check_structured_output(
    client: httpx.Client, *, chat_url: str, model: str, server_state: str, headers: dict[str, str], seconds: float
) -> StructuredCheck:
    """The cached verdict for (chat_url, model, server_state), else one probe within `seconds`.

    `server_state` names what would invalidate the verdict (server kind and loaded instances). Never
    raises for a server fault.
    """
    key = (chat_url, model, server_state)
    with _lock:
        known = _cache.get(key)
    if known is not None:
        return StructuredCheck(
            known.verdict, known.reason, known.latency_ms, known.prompt_tokens, known.completion_tokens, cached=True
        )
    found = _probe(client, chat_url, model, headers, seconds)
    if found.verdict != "unknown":
        with _lock:
            _cache[key] = found
    return found


def forget_structured_checks() -> None:
    """Drop every cached verdict (tests; a user who just updated the server)."""
    with _lock:
        _cache.clear()


def _probe(client: httpx.Client, chat_url: str, model: str, headers: dict[str, str], seconds: float) -> StructuredCheck:
    started = time.perf_counter()
    spec = StructuredOutput(name="health_check", schema=SCHEMA)
    messages = [{"role": "user", "content": PROMPT}]
    reason = "no answer"
    for form in ("json_schema", "json_object"):  # LM Studio/OpenAI take the first, llama-cpp-python the second
        payload = build_chat_payload(
            messages,
            model=model,
            temperature=0.0,
            max_tokens=MAX_TOKENS,
            response_format=render_response_format(spec, form),
        )
        remaining = seconds - (time.perf_counter() - started)
        if remaining <= 0.05:
            return StructuredCheck("unknown", f"no answer within {seconds:g} s", _ms(started))
        try:
            response = client.post(chat_url, json=payload, headers=headers, timeout=remaining)
        except (httpx.HTTPError, OSError) as exc:
            return StructuredCheck("unknown", error_from_exception(exc).message, _ms(started))
        outcome = parse_chat_response(response.status_code, response.content)
        if isinstance(outcome, Failure):
            reason = f"{form}: {outcome.error.message}"
            if not _refuses_the_schema(outcome):
                # Not about structured output (no such route, model not loaded, a 5xx): the calls will
                # meet it and say so; this check cannot tell.
                return StructuredCheck("unknown", reason, _ms(started))
            if form == "json_schema":
                continue
            return StructuredCheck("broken", reason, _ms(started))
        usage = (outcome.prompt_tokens, outcome.completion_tokens)
        try:
            body = json.loads(outcome.text)
        except ValueError:
            shown = outcome.text.strip()[:80] or "empty content"
            return StructuredCheck("broken", f"{form} answered {shown!r}, not JSON", _ms(started), *usage)
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            return StructuredCheck(
                "broken", f"{form} answered JSON outside the schema: {outcome.text[:80]!r}", _ms(started), *usage
            )
        return StructuredCheck("ok", None, _ms(started), *usage)
    return StructuredCheck("broken", reason, _ms(started))


# How servers refuse a schema they cannot serve: llama-cpp-python (500, json_schema), LM Studio (400,
# json_object; 0.4.19's "Unable to generate parser" for a pattern), llama.cpp's grammar converter.
_SCHEMA_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar", "parser")


def _refuses_the_schema(failure: Failure) -> bool:
    error = failure.error
    return error.http_status in (400, 422, 500) and any(w in error.message.lower() for w in _SCHEMA_WORDS)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 1)
