"""Turn a model's reply into a validated NounInsight, or say precisely why not."""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from gemantria_dag.control_plane.records import NounInsight

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)
_DECODER = json.JSONDecoder()  # stateless: one for every reply


def parse_insight(reply: str | None) -> tuple[NounInsight | None, str | None]:
    """(insight, None) when the reply validates, else (None, the problem in one line)."""
    if not reply or not reply.strip():
        return None, "empty reply"
    text = _FENCE.sub("", reply.strip())
    start = text.find("{")
    if start < 0:
        return None, "no JSON object in the reply"
    try:
        obj, _ = _DECODER.raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at char {exc.pos}"
    if not isinstance(obj, dict):
        return None, "the JSON is not an object"
    try:
        insight = NounInsight.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "object"
        return None, f"schema violation at {where}: {first['msg']}"
    if not insight.insight.strip():
        return None, "schema violation at insight: empty text"
    return insight, None
