"""What one LLM call leaves in `control.agent_run`, and what a run hands its IO manager.

The table's columns are fixed by RFC-080; everything else lives in the three JSON columns.
Each record carries its own uuid so that a write retried after a lost acknowledgement,
or replayed from the spool, lands exactly once (`ON CONFLICT (id) DO NOTHING`).

A run holds one call record and one outcome per noun until its IO manager writes them, so
these are slotted pydantic dataclasses (validated like models, about 0.6 KB a record instead
of 3.8 KB for a `BaseModel` with its per-instance dict and fields-set): peak memory stays
within a few percent whether a run enriches 500 nouns or all of them (issue 10).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from datetime import UTC, datetime
from functools import cache
from typing import Any, ClassVar, Literal, Self
from uuid import UUID

from pydantic import BaseModel, Field, TypeAdapter
from pydantic.dataclasses import dataclass


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
            return UUID(bytes=self._pool[start : start + 16], version=4)


new_record_id = _RandomIds()


@cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


class SlimModel:
    """The `BaseModel` methods this project uses, for slotted pydantic dataclasses."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """As `BaseModel.model_dump`: the fields as a dict (`mode="json"`: JSON-safe values)."""
        return _adapter(type(self)).dump_python(self, mode=mode)

    def model_dump_json(self) -> str:
        """As `BaseModel.model_dump_json`: the fields as compact JSON text."""
        return _adapter(type(self)).dump_json(self).decode("utf-8")

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """As `BaseModel.model_copy`: a shallow copy with `update`'s fields replaced, validated (ValidationError)."""
        return dataclasses.replace(self, **(update or {}))  # type: ignore[type-var]

    @classmethod
    def model_validate_json(cls, data: str | bytes) -> Self:
        """As `BaseModel.model_validate_json`: an instance from JSON text; raises pydantic's ValidationError."""
        return _adapter(cls).validate_json(data)  # type: ignore[no-any-return]


slim = dataclass(slots=True, kw_only=True)


@slim
class CallArgs(SlimModel):
    """What one LLM call asked for, stored as `control.agent_run.args_json`.

    `prompt_length` counts the characters of the messages' contents; `backend` is the route called,
    `routed_backend` the run's routing decision (they differ on a fallback).
    """

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
    # Which server answered: its base URL (the embedded engine adds the binary and the model file).
    server: str | None = None


@slim
class CallResult(SlimModel):
    """How one LLM call ended, stored as `control.agent_run.result_json` (from its `CompletionMetadata`).

    Times in milliseconds: `latency_ms` the whole call (every attempt and back-off), `ttft_ms` to the first
    token. `attempts` counts the requests sent; `substituted_model` is the model that answered instead of the
    one asked for.
    """

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
    # USD (gemantria_dag/cost/prices.py). Remote: the call's tokens at its model's price, None when the model
    # has no price or the reply reported no usage ("unpriced"). Local (LM Studio, the embedded engine): 0.0,
    # and saved_usd = what the configured remote model would have charged for the same tokens (None when
    # there is no priced remote model, or no usage). price_source: "settings" (LLM_PRICES), "genai-prices",
    # "local", or None (unpriced). All default to None: records written before issue 18 still load.
    cost_usd: float | None = None
    saved_usd: float | None = None
    price_source: str | None = None
    # Capacity (issue 17), None in rows written before it: the route's calls-in-flight limit when the call ended
    # (gemantria_dag/llm/limiter.py), the HTTP 429 answers its attempts got (None: none), and the milliseconds it
    # waited before sending for the remote's rate-limit allowance (None: it did not wait).
    concurrency_limit: int | None = None
    rate_limited: int | None = None
    rate_limit_wait_ms: float | None = None


@slim
class AgentRunRecord(SlimModel):
    """One row of `control.agent_run`: one LLM call (one failover attempt of a request).

    `id` is made here, so a write that is retried or replayed from the spool lands once; `session_id` is
    the Dagster run id.
    """

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


@slim
class NounEnrichment(SlimModel):
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
    # True when the run's journal already made every record and outcome durable (written as the calls arrived,
    # or spooled): the IO manager then writes nothing again. `stored` holds what it did (JournalReport's counts).
    durable: bool = False
    stored: dict[str, Any] | None = None

    @property
    def all_enrichments(self) -> list[NounEnrichment]:
        """Every outcome of the run: the reused ones, then the new ones."""
        return [*self.reused, *self.enrichments]
