"""The enrichment prompt. Changing anything the model sees means a new PROMPT_VERSION,
which makes every noun re-enrich instead of reusing a stale answer."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gemantria_dag.control_plane.records import NounInsight

PROMPT_VERSION = "noun-insight-v1"

SYSTEM = (
    "You are a scholar of Biblical Hebrew. Answer with one JSON object only, with the keys "
    '"insight" (one or two sentences), "themes" (a list of up to 4 short words) and '
    '"confidence" (a number between 0 and 1).'
)


def noun_prompt(noun: dict[str, Any]) -> str:
    """The user message about `noun`: a `noun_gematria` row as a dict (strong_id, lemma, transliteration,
    gender, language, gloss, gematria). Raises KeyError when one of them is missing (`gender` may be)."""
    gender = noun.get("gender") or "unspecified gender"
    return (
        f"Hebrew noun {noun['lemma']} ({noun['transliteration']}, Strong's {noun['strong_id']}, {gender}, "
        f'language {noun["language"]}), meaning "{noun["gloss"]}", gematria {noun["gematria"]}. '
        "Give a short theological or lexical insight about this noun."
    )


def build_messages(noun: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of a noun's first call: the system prompt `SYSTEM`, then `noun_prompt(noun)`."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": noun_prompt(noun)}]


def repair_messages(original: list[dict[str, str]], bad_reply: str, problem: str) -> list[dict[str, str]]:
    """The messages of a repair call: `original`, the bad reply (its first 2000 characters), and a request
    to answer again with valid JSON, naming `problem` (its first 300 characters)."""
    return [
        *original,
        {"role": "assistant", "content": bad_reply[:2000]},
        {
            "role": "user",
            "content": f"That reply is not valid ({problem[:300]}). Reply again with only the corrected JSON object.",
        },
    ]


def insight_json_schema() -> dict[str, Any]:
    """`NounInsight`'s JSON schema made strict: no other properties, every property required."""
    schema = NounInsight.model_json_schema()
    schema["additionalProperties"] = False
    # Strict structured output (OpenAI, LM Studio) wants every property listed as required.
    schema["required"] = list(schema["properties"])
    return schema


def response_format() -> dict[str, Any]:
    """OpenAI/LM Studio form; the backends convert it for servers that want `json_object`."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "noun_insight", "strict": True, "schema": insight_json_schema()},
    }


def params_hash(*, temperature: float, max_tokens: int) -> str:
    """The generation parameters that change an answer, as a short stable key."""
    blob = json.dumps({"temperature": temperature, "max_tokens": max_tokens}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
