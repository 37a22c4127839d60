"""The outcome rule, one table of cases, against both stores and the in-memory merge (outcome_rule.newer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gemantria_dag.control_plane.outcome_rule import newer
from gemantria_dag.control_plane.records import NounEnrichment, NounInsight
from gemantria_dag.control_plane.store import open_store
from gemantria_dag.settings import get_settings

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def outcome(ok: bool, minutes: int, text: str) -> NounEnrichment:
    return NounEnrichment(
        strong_id="H1",
        model="m",
        prompt_version="v1",
        params_hash="p",
        backend="remote",
        ok=ok,
        insight=NounInsight(insight=text, confidence=0.5) if ok else None,
        violation=None if ok else text,
        created_at=T0 + timedelta(minutes=minutes),
    )


# (stored first, offered next, the one that stays)
CASES = {
    "nothing stored: a failure is kept": (None, outcome(False, 1, "bad"), "bad"),
    "a later failure never replaces a success": (outcome(True, 0, "good"), outcome(False, 1, "bad"), "good"),
    "a later success replaces a failure": (outcome(False, 0, "bad"), outcome(True, 1, "good"), "good"),
    "a later success replaces a success": (outcome(True, 0, "old"), outcome(True, 1, "new"), "new"),
    "a later failure replaces a failure": (outcome(False, 0, "old"), outcome(False, 1, "new"), "new"),
    "an older success does not replace a newer one": (outcome(True, 1, "new"), outcome(True, 0, "old"), "new"),
    "the same outcome again changes nothing": (outcome(True, 0, "same"), outcome(True, 0, "other"), "same"),
}


def _text(o: NounEnrichment) -> str:
    return o.insight.insight if o.insight is not None else (o.violation or "")


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_rule_in_memory(case: str) -> None:
    stored, offered, stays = CASES[case]
    winner = offered if newer(stored, offered) else stored
    assert winner is not None and _text(winner) == stays


@pytest.mark.parametrize("db", ["postgres", "local"])
def test_rule_in_both_stores(db: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if db == "postgres":
        request.getfixturevalue("control_plane_dsn")
    for i, case in enumerate(CASES):
        stored, offered, stays = CASES[case]
        key = f"H{i}"
        store = open_store(get_settings(), tmp_path)
        for o in (stored, offered):
            if o is not None:
                assert store.write([], [o.model_copy(update={"strong_id": key})]) is None
        found = store.lookup([key], "m", "v1", "p")[key]
        assert _text(found) == stays, f"{db}: {case}"
