"""The local spool: call records and outcomes that could not reach Postgres, kept until they can.

One file per spooled batch, holding one JSON line. A file appears whole or not at all
(written to a hidden temp name, fsync'd, renamed, then the folder fsync'd), so a crash
never leaves half a batch behind. Replay writes a file in one transaction and removes it
only after that transaction committed; the records' own uuids (`ON CONFLICT (id) DO
NOTHING`) make a replay after an unknown commit outcome, or by two replayers, land once.
An exclusive `flock` on each file keeps two processes from replaying the same file at once.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from uuid import uuid4

import psycopg
from pydantic import BaseModel, Field, ValidationError

from gemantria_dag.control_plane.records import AgentRunRecord, NounEnrichment
from gemantria_dag.db.errors import error_kind

if TYPE_CHECKING:
    from gemantria_dag.control_plane.writer import ControlPlaneWriter

SUFFIX = ".jsonl"
# The counts are in the name so that `pmagent control summary` need not parse every file.
_NAME = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{12}-r(?P<records>\d+)-e(?P<enrichments>\d+)\.jsonl$")


class PendingBatch(BaseModel):
    """What one spool file holds: a slice of a run's records and outcomes, and why it was spooled."""

    version: Literal[1] = 1
    spooled_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    reason: str = ""
    records: list[AgentRunRecord] = Field(default_factory=list)
    enrichments: list[NounEnrichment] = Field(default_factory=list)


class SpoolSummary(BaseModel):
    """What `Spool.summary` counts: the pending files in `folder`, and the records and outcomes they hold."""

    folder: str
    files: int
    records: int
    enrichments: int


class ReplayReport(BaseModel):
    """What one `Spool.replay` did, in files and rows; `error` is the last database error (no password in it)."""

    files_replayed: int = 0
    files_left: int = 0
    files_busy: int = 0  # locked by another replayer at the time
    files_rejected: int = 0  # unreadable files, renamed to *.rejected
    records_written: int = 0
    records_already_present: int = 0
    enrichments_written: int = 0
    quarantined: int = 0  # rows the database rejected for a reason of their own (see quarantine.py)
    error: str | None = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Hold an exclusive `flock` on `path`; yield False when another process holds it or it is gone.

    The spool's replayers and the journals' recovery both use it: a file is handled by one process at a time,
    and a journal's writer holds its lock for its whole life, so a lock that can be taken means a dead writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        # Another replayer may have finished and unlinked this file between our listing and lock.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(fd)  # also releases the lock


class Spool:
    """The spool in `folder` (`Settings.spool_dir`): one `PendingBatch` per file, as described above."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def append(self, batch: PendingBatch) -> Path:
        """Write `batch` durably as one JSON line in a new file; return its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = batch.spooled_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{uuid4().hex[:12]}-r{len(batch.records)}-e{len(batch.enrichments)}{SUFFIX}"
        final = self.folder / name
        temp = self.folder / f".{name}.tmp"
        with temp.open("wb") as handle:
            handle.write(batch.model_dump_json().encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        _fsync_dir(self.folder)
        return final

    def pending(self) -> list[Path]:
        """Spool files not yet replayed, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))

    def read(self, path: Path) -> PendingBatch:
        """The batch in spool file `path`; raises OSError or pydantic's ValidationError when it cannot be read."""
        return PendingBatch.model_validate_json(path.read_bytes())

    def summary(self) -> SpoolSummary:
        """The pending files and what they hold, counted from their names (a file named by hand is read)."""
        files = self.pending()
        records = enrichments = 0
        for path in files:
            match = _NAME.match(path.name)
            if match:
                records += int(match["records"])
                enrichments += int(match["enrichments"])
                continue
            try:  # a file named by hand: count what it holds
                batch = self.read(path)
            except (OSError, ValidationError):
                continue
            records += len(batch.records)
            enrichments += len(batch.enrichments)
        return SpoolSummary(folder=str(self.folder), files=len(files), records=records, enrichments=enrichments)

    def iter_batches(self) -> Iterator[PendingBatch]:
        """Every readable pending batch (for readers that need spooled outcomes before replay)."""
        for path in self.pending():
            try:
                yield self.read(path)
            except (OSError, ValidationError):
                continue

    def replay(self, writer: ControlPlaneWriter) -> ReplayReport:
        """Write every pending file into the DB, one transaction each; stop at the first connection error."""
        report = ReplayReport()
        files = self.pending()
        if not files:
            return report
        try:
            conn = writer.connect()
        except psycopg.Error as exc:
            report.error = writer.describe_error(exc)
            report.files_left = len(files)
            return report
        with conn:
            for path in files:
                with claim(path) as claimed:
                    if not claimed:
                        report.files_busy += path.exists()
                        continue
                    try:
                        batch = self.read(path)
                    except (OSError, ValidationError):
                        path.rename(path.with_name(path.name + ".rejected"))
                        report.files_rejected += 1
                        continue
                    try:
                        counts = writer.persist(conn, batch.records, batch.enrichments)
                    except psycopg.Error as exc:
                        report.error = writer.describe_error(exc)
                        if error_kind(exc) == "transient":
                            break  # the connection or the server: this file (commit outcome unknown) and the rest stay
                        # A table or a privilege to fix (rows at fault were quarantined by persist, not raised):
                        # keep the file, say why, try the others.
                        continue
                    path.unlink()
                    _fsync_dir(self.folder)
                report.files_replayed += 1
                report.records_written += counts.records_written
                report.records_already_present += counts.records_already_present
                report.enrichments_written += counts.enrichments_written
                report.quarantined += counts.quarantined
        report.files_left = len(self.pending())
        return report
