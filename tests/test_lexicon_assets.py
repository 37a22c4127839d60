from __future__ import annotations

import psycopg
from dagster import DagsterInstance, materialize

from assets.hebrew_nouns import hebrew_nouns
from assets.noun_gematria import noun_gematria
from gemantria_dag.settings import get_settings
from resources.build import build_resources


def _run(instance: DagsterInstance):
    return materialize([hebrew_nouns, noun_gematria], resources=build_resources(get_settings()), instance=instance)


def test_db_off_materializes_from_real_source() -> None:
    with DagsterInstance.ephemeral() as instance:
        result = _run(instance)
    assert result.success
    frame = result.output_for_node("noun_gematria")
    assert len(frame) > 3500
    assert frame.set_index("strong_id").loc["H1", "gematria"] == 3
    meta = result.asset_materializations_for_node("noun_gematria")[0].metadata
    assert meta["rows_in_postgres"].value == 0 and meta["database"].value == "off"
    assert meta["row_count"].value == len(frame)


def test_embedded_postgres_mirror_is_idempotent(control_plane_dsn: str) -> None:
    with DagsterInstance.ephemeral() as instance:
        first = _run(instance)
        second = _run(instance)
    assert first.success and second.success
    n = len(first.output_for_node("noun_gematria"))
    with psycopg.connect(control_plane_dsn) as conn:
        count, total = conn.execute("SELECT count(*), sum(gematria) FROM gematria.noun_gematria").fetchone()
        elohim = conn.execute(
            "SELECT gematria FROM gematria.noun_gematria WHERE consonantal = 'אב' AND strong_id = 'H1'"
        ).fetchone()
    assert count == n
    assert total == int(first.output_for_node("noun_gematria")["gematria"].sum())
    assert elohim == (3,)
