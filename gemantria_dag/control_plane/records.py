"""What one LLM call leaves in `control.agent_run`, and what a run hands its IO manager.

The table's columns are fixed by RFC-080; everything else lives in the three JSON columns.
Each record carries its own uuid so that a write retried after a lost acknowledgement,
or replayed from the spool, lands exactly once (`ON CONFLICT (id) DO NOTHING`).
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

TOOL_LM_STUDIO = "lm_studio"


class _RandomIds:
    """Random (version 4) uuids from the OS's generator, read 256 at a time.

    `uuid.uuid4()` makes one getrandom() call per id, which costs about 0.1 ms on these VMs:
    a tenth of the client's CPU budget per LLM call. Same source, same randomness, one call per 256.
    """

    _BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._next = 0
        # A forked child must not hand out its parent's unused ids: ids are how writes dedupe.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._next = b"", 0

    def __call__(self) -> UUID:
        with self._lock:
            if self._next >= len(self._pool):
                self._pool, self._next = os.urandom(16 * self._BATCH), 0
            start = self._next
            self._next = start + 16
            return UUID(bytes=self._pool[start:start + 16], version=4)


new_record_id = _RandomIds()


class CallArgs(BaseModel):
    model: str | None
    requested_model: str | None = None
    prompt_length: int
    temperature: float
    max_tokens: int
    strong_id: str | None = None
    run_id: str | None = None
    asset_key: str | None = None
    partition: str | None = None
    routed_backend: str
    backend: str
    fallback: bool = False
    prompt_version: str | None = None
    purpose: Literal["enrich", "repair", "probe"] = "enrich"


class CallResult(BaseModel):
    ok: bool
    response_length: int = 0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int = 1
    error_code: str | None = None
    finish_reason: str | None = None
    substituted_model: str | None = None


class AgentRunRecord(BaseModel):
    id: UUID = Field(default_factory=new_record_id)
    project_id: int
    session_id: UUID | None = None
    tool: str
    args: CallArgs
    result: CallResult
    violations: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class NounInsight(BaseModel):
    """The structured answer the LLM must give for one noun."""

    insight: str = Field(min_length=1)
    themes: list[str] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)


class NounEnrichment(BaseModel):
    """The outcome for one noun under one (model, prompt version, parameters): an insight or a violation."""

    strong_id: str
    model: str
    prompt_version: str
    params_hash: str
    backend: str
    ok: bool
    insight: NounInsight | None = None
    violation: str | None = None
    record_id: UUID | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class EnrichmentBatch(BaseModel):
    """The value `noun_enrichments` returns: its new outcomes, the reused ones, and every call it made."""

    partition: str | None = None
    enrichments: list[NounEnrichment] = Field(default_factory=list)
    reused: list[NounEnrichment] = Field(default_factory=list)
    records: list[AgentRunRecord] = Field(default_factory=list)

    @property
    def all_enrichments(self) -> list[NounEnrichment]:
        return [*self.reused, *self.enrichments]
