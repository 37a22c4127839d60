"""Rows that PostgreSQL rejects for a reason of their own, set aside so that they never block the others.

When a batch fails with a row-level error (`gemantria_dag.db.errors`: a constraint, a value the
database cannot store or index), the writer splits it until it finds the rows at fault, writes
the rest, and files each rejected row here: one JSON file per row, named by its key, so filing
the same row again (a replay of the same batch) keeps one file. `pmagent control summary` and
`pmagent control flush` count them and name the database's reasons; nothing here is retried.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

QuarantineTable = Literal["control.agent_run", "gematria.noun_enrichment"]


class QuarantinedRow(BaseModel):
    """One rejected row: its table, its key, the database's reason and SQLSTATE, and the row as JSON text."""

    table: QuarantineTable
    key: str
    reason: str
    sqlstate: str | None = None
    quarantined_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    row_json: str


class QuarantineSummary(BaseModel):
    """The rows in `folder`, in all and by reason (the reason's first 160 characters)."""

    folder: str
    rows: int
    by_reason: dict[str, int]


class Quarantine:
    """The quarantine folder (`Settings.quarantine_dir`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def add(self, row: QuarantinedRow) -> Path:
        """File `row` (atomically; the same table and key again replaces the file); return its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(f"{row.table}\0{row.key}".encode()).hexdigest()[:24]
        final = self.folder / f"{row.table}-{digest}.json"
        temp = self.folder / f".{final.name}.tmp"
        with temp.open("wb") as handle:
            handle.write(row.model_dump_json().encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        return final

    def rows(self) -> list[QuarantinedRow]:
        """Every quarantined row, oldest file first; unreadable files are skipped."""
        if not self.folder.is_dir():
            return []
        found: list[QuarantinedRow] = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                found.append(QuarantinedRow.model_validate_json(path.read_bytes()))
            except (OSError, ValueError):
                continue
        return found

    def summary(self) -> QuarantineSummary:
        """How many rows are quarantined, and why."""
        rows = self.rows()
        return QuarantineSummary(
            folder=str(self.folder), rows=len(rows), by_reason=dict(Counter(r.reason[:160] for r in rows))
        )
