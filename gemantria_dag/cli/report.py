"""`pmagent report`: what the main job just did, in a few lines a person can read.

Reads Dagster's instance (DAGSTER_HOME: the latest materializations of the lexicon and of one
enrichment partition) and the control plane (the rows that enrichment run wrote). Exit codes:
0; 1 when `--require-rows` is given and the latest enrichment run made calls but wrote no
`control.agent_run` row, or when there is no enrichment to report; 2 on bad settings.
"""

from __future__ import annotations

from typing import Any

import typer

from gemantria_dag.cli.output import fail_on_settings_error, print_json
from gemantria_dag.db.target import resolve_database
from gemantria_dag.names import HEBREW_NOUNS, NOUN_ENRICHMENTS, NOUN_GEMATRIA
from gemantria_dag.settings import Settings


def _latest(instance: Any, key: str, partition: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(metadata values, run id) of the latest materialization of `key` (and `partition`) in `instance`."""
    from dagster import AssetKey, AssetRecordsFilter

    found = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition] if partition else None), limit=1
    )
    if not found.records:
        return {}, None
    record = found.records[0]
    meta = record.asset_materialization.metadata if record.asset_materialization else {}
    return {k: getattr(v, "value", v) for k, v in meta.items()}, record.run_id


def _rows_for_run(settings: Settings, run_id: str) -> int | None:
    """control.agent_run rows of `run_id`; None when the control plane is off or unreachable."""
    target = resolve_database(settings)
    if not target.on:
        return None
    try:
        with target.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM control.agent_run WHERE args_json->>'run_id' = %s", (run_id,)
            ).fetchone()
    except Exception:  # noqa: BLE001 - a report must not crash on a DB that just went away
        return None
    return int(row[0]) if row else 0


def report(
    partition: str = typer.Option("vav", "--partition", "-p", help="The enrichment partition to report."),
    require_rows: bool = typer.Option(False, "--require-rows", help="Exit 1 if the run's calls left no row."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of lines."),
) -> None:
    """What the main job did: nouns, gematria rows, nouns enriched ok / failed, backend and model, rows in
    control.agent_run, and where to look next."""
    from dagster import DagsterInstance  # here: the other pmagent commands do not pay for importing Dagster

    with fail_on_settings_error() as settings:
        instance = DagsterInstance.get()
        nouns, _ = _latest(instance, HEBREW_NOUNS)
        gematria, _ = _latest(instance, NOUN_GEMATRIA)
        enriched, run_id = _latest(instance, NOUN_ENRICHMENTS, partition)
        rows = _rows_for_run(settings, run_id) if run_id else None
    summary = {
        "nouns": nouns.get("row_count"),
        "gematria_rows": gematria.get("row_count"),
        "gematria_rows_in_postgres": gematria.get("rows_in_postgres"),
        "partition": partition,
        "enrichment_run_id": run_id,
        "backend": enriched.get("routed_backend"),
        "model": enriched.get("model"),
        "nouns_in_scope": enriched.get("nouns_in_scope"),
        "nouns_ok": enriched.get("nouns_enriched"),
        "violations": enriched.get("violations"),
        "nouns_failed": enriched.get("nouns_failed"),
        "reused_outcomes": enriched.get("cache_hits"),
        "reused_ok": enriched.get("reused_ok"),
        "calls_made": enriched.get("calls_made"),
        "agent_run_rows": rows,
        "next": ["pmagent control summary", "make dev, then http://127.0.0.1:3000"],
    }
    if as_json:
        print_json(summary)
    else:
        _print_lines(summary)
    if run_id is None:
        typer.echo(f"error: no materialization of {NOUN_ENRICHMENTS} partition {partition} yet", err=True)
        raise typer.Exit(1)
    if require_rows and (summary["calls_made"] or 0) > 0 and not rows:
        typer.echo(
            f"error: run {run_id} made {summary['calls_made']} calls but control.agent_run has no row of it", err=True
        )
        raise typer.Exit(1)


def _print_lines(s: dict[str, Any]) -> None:
    rows = "off (GEMATRIA_DSN=off or unreachable)" if s["agent_run_rows"] is None else s["agent_run_rows"]
    lines = [
        f"nouns: {s['nouns']}   gematria rows: {s['gematria_rows']} ({s['gematria_rows_in_postgres']} in Postgres)",
        f"enrichment of {s['partition']} ({s['nouns_in_scope']} nouns): this run {s['nouns_ok']} ok, "
        f"{s['violations']} violations, {s['nouns_failed']} failed, {s['calls_made']} LLM calls; "
        f"{s['reused_outcomes']} outcomes reused from earlier runs ({s['reused_ok']} ok)",
        f"backend: {s['backend']}   model: {s['model']}",
        f"control.agent_run rows of run {s['enrichment_run_id']}: {rows}",
        "next: " + "; ".join(s["next"]),
    ]
    typer.echo("\n".join(lines))
