from __future__ import annotations

import pytest

from gemantria_dag.enrichment.parse import parse_insight
from gemantria_dag.enrichment.prompt import build_messages, params_hash, response_format

GOOD = '{"insight": "Father is the head of a household.", "themes": ["family"], "confidence": 0.8}'


def test_valid_reply() -> None:
    insight, problem = parse_insight(GOOD)
    assert problem is None and insight is not None and insight.confidence == 0.8


def test_fenced_and_prefixed_reply() -> None:
    insight, problem = parse_insight("Here you go:\n```json\n" + GOOD + "\n```")
    assert problem is None and insight is not None


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ("", "empty reply"),
        ("no json here", "no JSON object"),
        ('{"insight": "cut off mid', "invalid JSON"),
        ('{"insight": "x", "themes": [], "confidence": 3}', "confidence"),
        ('{"themes": [], "confidence": 0.1}', "insight"),
        ('{"insight": "   ", "themes": [], "confidence": 0.1}', "empty text"),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_invalid_replies_say_why(reply: str, fragment: str) -> None:
    insight, problem = parse_insight(reply)
    assert insight is None and problem is not None and fragment in problem


def test_prompt_carries_the_noun_and_schema() -> None:
    noun = {
        "strong_id": "H1",
        "lemma": "אָב",
        "transliteration": "ʼâb",
        "gender": "masculine",
        "language": "heb",
        "gloss": "father",
        "gematria": 3,
    }
    messages = build_messages(noun)
    assert "H1" in messages[-1]["content"] and "gematria 3" in messages[-1]["content"]
    schema = response_format()["json_schema"]["schema"]
    assert set(schema["required"]) >= {"insight", "confidence"}
    assert params_hash(temperature=0.2, max_tokens=256) != params_hash(temperature=0.3, max_tokens=256)
