"""The request side of OpenAI's chat-completions protocol, as pure functions.

Checking a caller's arguments, normalizing every accepted form of `response_format`, rendering it
in the wire form a server takes (`json_schema` for OpenAI and LM Studio, `json_object` + schema for
llama-cpp-python), and building the request body. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

StructuredForm = Literal["json_schema", "json_object"]


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A request for JSON output, independent of the wire form a given server accepts."""

    name: str
    schema: Mapping[str, Any] | None


def validate_call(
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    temperature: float,
    max_tokens: int,
) -> list[dict[str, Any]]:
    """Check the caller's arguments (a mistake here is a bug: raise) and return the messages."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of `prompt` or `messages`")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be between 0 and 2, got {temperature!r}")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        return [{"role": "user", "content": prompt}]
    assert messages is not None
    if isinstance(messages, (str, bytes)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} mappings")
    out: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValueError(f"each message needs a 'role' and a 'content', got {m!r}")
        out.append(dict(m))
    return out


def normalize_response_format(response_format: object) -> StructuredOutput | None:
    """Accept the OpenAI forms, llama.cpp's form, or a pydantic model class; None means free text."""
    if response_format is None:
        return None
    if isinstance(response_format, type) and issubclass(response_format, BaseModel):
        return StructuredOutput(name=response_format.__name__, schema=response_format.model_json_schema())
    if not isinstance(response_format, Mapping):
        raise ValueError(
            "response_format must be None, a mapping such as {'type': 'json_schema', ...} or a pydantic model class"
        )
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise ValueError("a json_schema response_format needs {'json_schema': {'name': ..., 'schema': {...}}}")
        return StructuredOutput(name=str(spec.get("name") or "response"), schema=spec["schema"])
    if kind == "json_object":
        schema = response_format.get("schema")
        if schema is not None and not isinstance(schema, Mapping):
            raise ValueError("the schema of a json_object response_format must be a mapping")
        return StructuredOutput(name="response", schema=schema)
    raise ValueError(f"unknown response_format type {kind!r}: use text, json_schema or json_object")


def render_response_format(spec: StructuredOutput, form: StructuredForm) -> dict[str, Any]:
    """`spec` in the wire form `form`: `{"type": "json_schema", "json_schema": {name, schema}}` (OpenAI,
    LM Studio; `{"type": "object"}` without a schema) or `{"type": "json_object"}`, with `schema` when there is one."""
    if form == "json_object":
        # llama-cpp-python's server: grammar-constrained by the schema when one is given.
        return {"type": "json_object", "schema": dict(spec.schema)} if spec.schema else {"type": "json_object"}
    # LM Studio and OpenAI only take json_schema; without a schema, any object is the closest match.
    schema = dict(spec.schema) if spec.schema else {"type": "object"}
    return {"type": "json_schema", "json_schema": {"name": spec.name, "schema": schema}}


def build_chat_payload(
    messages: list[dict[str, Any]],
    *,
    model: str | None,
    temperature: float,
    max_tokens: int,
    response_format: dict[str, Any] | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """The chat-completions request body. Without `model` the server answers with its loaded model; a stream
    asks for token usage in its last chunk (`stream_options.include_usage`)."""
    payload: dict[str, Any] = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    # Without a model name, LM Studio and llama.cpp answer with the loaded model.
    if model:
        payload["model"] = model
    if response_format is not None:
        payload["response_format"] = response_format
    if stream:
        payload["stream"] = True
        # Servers that know it send token counts in a last chunk; others ignore it.
        payload["stream_options"] = {"include_usage": True}
    return payload


def bearer(token: str | None) -> dict[str, str]:
    """The `Authorization` header for a bearer token (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
