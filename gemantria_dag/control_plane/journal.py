"""A run's write-ahead journal of LLM calls: every answer durable as it arrives, nothing paid twice after a crash.

Nothing used to be written until the enrichment step ended: a run killed 25 s into a backfill had
1,665 answered (and paid) calls that were recorded nowhere, and the next run paid for them again
(issue 15). Now each run process appends to a journal file of its own, in `Settings.journal_dir`:

- an `intent` line before a request is sent (its `request_id`, the noun, the prompt's length);
- a `done` line with the request's call records when it ends (its `request_id` and records);
- an `outcome` line when a noun has its outcome.

Lines are appended with `write(2)` to a file opened with O_APPEND: once written they survive the death
of the process (SIGKILL, the OOM killer). An intent is written at once (the request leaves in the same
turn of the event loop); `done` and `outcome` lines at the end of the event loop's turn, together, and
their rows reach the store only after that. A group commit every `GROUP_COMMIT_SECONDS` fsyncs the file (so it
also survives the machine) and moves what arrived into the store (`store.py`: PostgreSQL, or the local
store when the database is off) in one transaction. When the store cannot take them (the database is
down) they stay in the journal and are tried again with a growing pause; `close` hands whatever is still
unwritten to the spool, then removes the journal.

The writer holds an exclusive `flock` on its journal for its whole life. A journal whose lock can be taken
belongs to a process that died: `recover` replays it, once. Its records and outcomes are written (their
ids make a second write land once); an intent without its `done` line becomes a call record whose outcome
is unknown (`error_code` and a violation `worker_died`, with the intent's id as the record id), because
the server may have answered, and charged, it. So after a crash every call the server answered has one row,
the calls in flight at the kill have one `worker_died` row each, and the next run reuses every outcome that
reached the journal: at most the calls in flight are paid twice.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from uuid import UUID

from pydantic import BaseModel, ValidationError

from gemantria_dag.control_plane.records import AgentRunRecord, CallArgs, CallResult, NounEnrichment
from gemantria_dag.control_plane.spool import claim
from gemantria_dag.llm.results import ErrorCode

# 250 ms: the top of issue 15's 100-250 ms window, since each transaction costs about 1 ms of client CPU whatever
# its size (measured: 300 commits of 12 records and 12 outcomes took 0.33 s of CPU, one of 3,600 + 3,600 0.05 s).
# At C=64 against a 200 ms server that is about 80 calls per transaction, 4 transactions a second.
GROUP_COMMIT_SECONDS = 0.25
# After a failed write to the store, wait this long before the next try, doubling up to the maximum: a down
# database costs one connection attempt per pause, not one per group commit.
RETRY_PAUSE_SECONDS = (1.0, 15.0)
SUFFIX = ".journal"

WORKER_DIED_MESSAGE = (
    "the run's process died while this call was in flight: the server may have answered (and charged) it, "
    "but the reply never arrived; the noun is called again by the next run"
)


class JournalHeader(BaseModel):
    """The first line of a journal: what every unknown-outcome record of the run needs."""

    project_id: int
    run_id: str | None
    asset_key: str | None
    routed_backend: str
    tool: str
    model: str | None
    prompt_version: str | None
    temperature: float
    max_tokens: int
    server: str | None = None
    # The journaling process and its parent (Dagster's run worker under the multiprocess executor): when both are
    # gone the run died with them, and the next run marks it failed (steps.reap_dead_runs).
    pid: int | None = None
    parent_pid: int | None = None


class Sink(Protocol):
    """Where the journal's calls go (the store, `store.py`)."""

    @property
    def where(self) -> str:
        """Where rows go, safe to print."""
        ...

    def write(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment]) -> str | None:
        """Write both in one transaction; None when written, else why not (nothing written, try again later)."""
        ...

    def spool(self, records: Sequence[AgentRunRecord], outcomes: Sequence[NounEnrichment], reason: str) -> str:
        """Keep both durably until `write` can take them; return where (safe to print). Raises OSError."""
        ...


@dataclass
class JournalReport:
    """What a journal did: rows written by its group commits, rows spooled at its close, and where they went."""

    records_written: int = 0
    outcomes_written: int = 0
    records_spooled: int = 0
    outcomes_spooled: int = 0
    commits: int = 0
    commit_seconds: float = 0.0  # in the group-commit thread: fsync and the store's transactions
    append_seconds: float = 0.0  # on the calls' event loop: encoding and appending the journal's lines
    unknown_outcomes: int = 0
    spool_reason: str | None = None
    spooled_to: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        """True when every row went into the store or the spool (the journal was removed)."""
        return not self.errors


def _line(kind: str, body: str) -> bytes:
    return f'{{"k":"{kind}",{body[1:]}\n'.encode() if body.startswith("{") else b""


def _unknown_record(header: JournalHeader, intent: dict[str, object]) -> AgentRunRecord:
    """The record of a call whose process died in flight (see the module's docstring)."""
    return AgentRunRecord(
        id=UUID(str(intent["id"])),
        project_id=header.project_id,
        tool=header.tool,
        args=CallArgs(
            model=header.model,
            prompt_length=int(intent.get("prompt_length", 0)),  # type: ignore[arg-type]
            temperature=header.temperature,
            max_tokens=header.max_tokens,
            strong_id=intent.get("strong_id"),  # type: ignore[arg-type]
            run_id=header.run_id,
            asset_key=header.asset_key,
            partition=intent.get("partition"),  # type: ignore[arg-type]
            routed_backend=header.routed_backend,
            backend=header.routed_backend,
            prompt_version=header.prompt_version,
            purpose=intent.get("purpose", "enrich"),  # type: ignore[arg-type]
            server=header.server,
        ),
        result=CallResult(ok=False, error_code=ErrorCode.WORKER_DIED.value),
        violations=[{"code": ErrorCode.WORKER_DIED.value, "message": WORKER_DIED_MESSAGE}],
        created_at=datetime.fromisoformat(str(intent["at"])),
    )


class Journal:
    """The journal of one run process, and its group-commit thread (see the module's docstring).

    Use: `intent` before each request, `done` when its records are final, `outcome` per noun, then `close`.
    Calls may come from one event loop; the group commit runs in a thread of its own, so the calls in flight
    never wait for the database. Raises OSError when the journal cannot be created.
    """

    def __init__(
        self, folder: Path, header: JournalHeader, sink: Sink, *, commit_seconds: float = GROUP_COMMIT_SECONDS
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.path = folder / f"{stamp}-{(header.run_id or 'run')[:8]}-{os.getpid()}{SUFFIX}"
        self._sink = sink
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        if header.pid is None:
            header = header.model_copy(update={"pid": os.getpid(), "parent_pid": os.getppid()})
        self.header = header
        os.write(self._fd, _line("header", header.model_dump_json()))
        os.fsync(self._fd)
        self._commit_seconds = commit_seconds
        self._lock = threading.Lock()
        self._records: list[AgentRunRecord] = []
        self._outcomes: list[NounEnrichment] = []
        self._open_intents: dict[UUID, dict[str, object]] = {}
        # Lines (and their rows) waiting for the end of this turn of the event loop: see _flush_soon.
        self._lines: list[bytes] = []
        self._line_records: list[AgentRunRecord] = []
        self._line_outcomes: list[NounEnrichment] = []
        self._flush_scheduled = False
        self._unwritten: tuple[list[AgentRunRecord], list[NounEnrichment]] = ([], [])
        self._retry_at = 0.0
        self._pause = RETRY_PAUSE_SECONDS[0]
        self._last_reason: str | None = None
        self.report = JournalReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._commit_loop, name="journal-group-commit", daemon=True)
        self._thread.start()

    def intent(
        self, request_id: UUID, strong_id: str | None, partition: str | None, purpose: str, prompt_length: int
    ) -> None:
        """Note a request about to be sent (before it is sent)."""
        started = time.perf_counter()
        intent: dict[str, object] = {
            "id": str(request_id),
            "strong_id": strong_id,
            "partition": partition,
            "purpose": purpose,
            "prompt_length": prompt_length,
            "at": datetime.now(UTC).isoformat(),
        }
        self._lines.append(_line("intent", json.dumps(intent, ensure_ascii=False)))
        self._flush_lines()  # now: the request goes out in this turn of the event loop, and must be known first
        self._open_intents[request_id] = intent
        self.report.append_seconds += time.perf_counter() - started

    def done(self, request_id: UUID, records: Sequence[AgentRunRecord]) -> None:
        """The request ended with these (final) records; none when nothing was sent."""
        started = time.perf_counter()
        body = ",".join(r.model_dump_json() for r in records)
        self._lines.append(f'{{"k":"done","id":"{request_id}","records":[{body}]}}\n'.encode())
        self._open_intents.pop(request_id, None)
        self._line_records.extend(records)
        self._flush_soon()
        self.report.append_seconds += time.perf_counter() - started

    def outcome(self, outcome: NounEnrichment) -> None:
        """A noun's outcome (after the `done` of its last request)."""
        started = time.perf_counter()
        self._lines.append(_line("outcome", outcome.model_dump_json()))
        self._line_outcomes.append(outcome)
        self._flush_soon()
        self.report.append_seconds += time.perf_counter() - started

    def _flush_soon(self) -> None:
        """Append the waiting lines at the end of this turn of the event loop (at once outside a loop): the lines of
        the calls that end together go out in one write(2) (each write lets the group-commit thread take the GIL:
        measured, 3 writes a call cost about 0.1 ms of the event loop's time per call at C=16)."""
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush_lines()
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush_lines)

    def _flush_lines(self) -> None:
        """Write the waiting lines in one append, then hand their rows to the group commit: a row reaches the store
        only after its line is in the journal, or a recovery could record its call twice."""
        self._flush_scheduled = False
        if not self._lines:
            return
        os.write(self._fd, b"".join(self._lines))
        self._lines.clear()
        if self._line_records or self._line_outcomes:
            with self._lock:
                self._records.extend(self._line_records)
                self._outcomes.extend(self._line_outcomes)
            self._line_records.clear()
            self._line_outcomes.clear()

    def _commit_loop(self) -> None:
        while not self._stop.wait(self._commit_seconds):
            self._commit()

    def _commit(self, *, final: bool = False) -> None:
        with self._lock:
            records, self._records = self._records, []
            outcomes, self._outcomes = self._outcomes, []
        if not records and not outcomes and not any(self._unwritten):
            return
        started = time.perf_counter()
        os.fsync(self._fd)  # durable on disk before the database may hold them
        self._unwritten[0].extend(records)
        self._unwritten[1].extend(outcomes)
        if not final and time.monotonic() < self._retry_at:
            return
        rows, outs = self._unwritten
        reason = self._sink.write(rows, outs)
        self.report.commit_seconds += time.perf_counter() - started
        if reason is None:
            self.report.records_written += len(rows)
            self.report.outcomes_written += len(outs)
            self.report.commits += 1
            self._unwritten = ([], [])
            self._pause = RETRY_PAUSE_SECONDS[0]
            self._retry_at = 0.0
        else:
            self._last_reason = reason
            self._retry_at = time.monotonic() + self._pause
            self._pause = min(self._pause * 2, RETRY_PAUSE_SECONDS[1])

    def close(self) -> JournalReport:
        """Stop the group commit, write what is left (calls still open are recorded as `worker_died`: their
        replies never arrived), spool whatever the store cannot take, and remove the journal.

        Never raises for the store: when even the spool fails, the journal stays for `recover` and
        `report.errors` says why.
        """
        self._flush_lines()
        self._stop.set()
        self._thread.join()
        if self._open_intents:
            unknown = [_unknown_record(self.header, i) for i in self._open_intents.values()]
            self.report.unknown_outcomes += len(unknown)
            self.done_unknown(unknown)
        try:
            self._commit(final=True)
            rows, outs = self._unwritten
            if rows or outs:
                reason = self._last_reason or "the store did not take them"
                self.report.spooled_to = self._sink.spool(rows, outs, reason)
                self.report.records_spooled, self.report.outcomes_spooled = len(rows), len(outs)
                self.report.spool_reason = reason
                self._unwritten = ([], [])
            os.unlink(self.path)
        except Exception as exc:  # noqa: BLE001 - the journal keeps everything; recover() replays it
            self.report.errors.append(f"{type(exc).__name__}: {exc} (kept in {self.path})")
        finally:
            os.close(self._fd)  # releases the lock
        return self.report

    @property
    def where(self) -> str:
        """Where this journal's rows go (its store), safe to print."""
        return self._sink.where

    def done_unknown(self, records: list[AgentRunRecord]) -> None:
        """Append records of unknown outcome (open intents at close) as if their requests had ended so."""
        for record in records:
            self.done(record.id, [record])


class RecoveryReport(BaseModel):
    """What `recover` did: journals of dead processes replayed, their rows, and those whose outcome is unknown."""

    journals: int = 0
    journals_busy: int = 0
    records: int = 0
    outcomes: int = 0
    unknown_outcomes: int = 0
    spooled: int = 0
    errors: list[str] = []
    # Runs whose journal was recovered and whose processes are all gone: dead, whatever their Dagster status says.
    dead_runs: list[str] = []


@dataclass
class _Replayed:
    header: JournalHeader | None = None
    records: list[AgentRunRecord] = field(default_factory=list)
    outcomes: list[NounEnrichment] = field(default_factory=list)
    intents: dict[str, dict[str, object]] = field(default_factory=dict)


def _read(path: Path) -> _Replayed:
    """Parse a journal; a torn last line (the process died inside a write) is skipped."""
    found = _Replayed()
    with path.open("rb") as handle:
        for raw in handle:
            try:
                entry = json.loads(raw)
                kind = entry.pop("k")
                if kind == "header":
                    found.header = JournalHeader.model_validate(entry)
                elif kind == "intent":
                    found.intents[str(entry["id"])] = entry
                elif kind == "done":
                    found.intents.pop(str(entry["id"]), None)
                    found.records.extend(AgentRunRecord.model_validate_json(json.dumps(r)) for r in entry["records"])
                elif kind == "outcome":
                    found.outcomes.append(NounEnrichment.model_validate_json(json.dumps(entry)))
            except (ValueError, KeyError, ValidationError):
                continue
    return found


def _alive(pid: int | None) -> bool:
    """Whether process `pid` exists on this machine (journals are local files: so were their writers)."""
    if not pid or pid <= 1:  # unknown, or re-parented to init: nothing to wait for
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pending_journals(folder: Path) -> list[Path]:
    """Journal files in `folder`, oldest first (those of live processes too)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))


def recover(folder: Path, sink: Sink) -> RecoveryReport:
    """Replay the journals in `folder` whose process died (their lock is free), then remove them.

    Rows go to `sink.write`, else to `sink.spool`; a journal is removed only once its rows are durable there.
    """
    report = RecoveryReport()
    for path in pending_journals(folder):
        with claim(path) as claimed:
            if not claimed:
                report.journals_busy += path.exists()  # its writer is alive (gone: another recovery took it)
                continue
            found = _read(path)
            records = list(found.records)
            if found.header is not None:
                unknown = [_unknown_record(found.header, i) for i in found.intents.values()]
                records.extend(unknown)
                report.unknown_outcomes += len(unknown)
            try:
                reason = sink.write(records, found.outcomes) if records or found.outcomes else None
                if reason is not None:
                    sink.spool(records, found.outcomes, reason)
                    report.spooled += len(records) + len(found.outcomes)
                os.unlink(path)
            except Exception as exc:  # noqa: BLE001 - the journal stays; the next recovery tries again
                report.errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
                continue
        report.journals += 1
        if found.header is not None and found.header.run_id and not _alive(found.header.parent_pid):
            report.dead_runs.append(found.header.run_id)
        report.records += len(records)
        report.outcomes += len(found.outcomes)
    return report
