"""The one rule for a noun's stored outcome: the newest wins, but a success is never replaced by a failure.

Written once here, in Python (for outcomes merged in memory: the spool, a journal) and as the
`ON CONFLICT ... DO UPDATE ... WHERE` condition that PostgreSQL (`gematria.noun_enrichment`) and
SQLite (the DB-off store) both apply; a replay of the same outcome (same `created_at`) changes
nothing. `tests/test_outcome_rule.py` runs one table of cases against both stores.
"""

from __future__ import annotations

from gemantria_dag.control_plane.records import NounEnrichment


def newer(current: NounEnrichment | None, candidate: NounEnrichment) -> bool:
    """True when `candidate` replaces `current` (None: nothing stored yet)."""
    return current is None or (candidate.created_at > current.created_at and (candidate.ok or not current.ok))


def newer_sql(table: str) -> str:
    """The same rule as an upsert's `DO UPDATE ... WHERE` condition; `table` is the target table's name or alias,
    `excluded` the row proposed for insertion (the spelling PostgreSQL and SQLite share)."""
    return f"{table}.created_at < excluded.created_at AND (excluded.ok OR NOT {table}.ok)"
