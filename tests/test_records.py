"""Call records and outcomes: the slim record types keep pydantic's validation and JSON, and
their ids stay unique (writes dedupe on them) across batches of ids and across a fork."""

from __future__ import annotations

import os
from uuid import UUID

import pytest
from pydantic import ValidationError

from gemantria_dag.control_plane.records import (
    AgentRunRecord,
    CallArgs,
    CallResult,
    EnrichmentBatch,
    NounEnrichment,
    NounInsight,
    new_record_id,
)


def _record(**args: object) -> AgentRunRecord:
    call = {
        "model": "m",
        "prompt_length": 10,
        "temperature": 0.2,
        "max_tokens": 64,
        "routed_backend": "remote",
        "backend": "remote",
        **args,
    }
    return AgentRunRecord(project_id=1, tool="remote_llm", args=CallArgs(**call), result=CallResult(ok=True))


def test_ids_are_unique_random_uuids_across_refills() -> None:
    ids = [new_record_id() for _ in range(5000)]  # about 20 refills of the id pool
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {4}
    assert len({_record().id for _ in range(300)}) == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_forked_child_never_reuses_its_parents_ids() -> None:
    new_record_id()  # the parent now holds a pool of unused ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send the ids it would use next
        os.write(write, b"".join(new_record_id().bytes for _ in range(8)))
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16 * 8)
    os.close(read)
    os.close(write)
    child_ids = {UUID(bytes=child[i : i + 16]) for i in range(0, len(child), 16)}
    parent_ids = {new_record_id() for _ in range(8)}
    assert len(child_ids) == 8 and not child_ids & parent_ids


def test_records_validate_and_round_trip_through_json() -> None:
    with pytest.raises(ValidationError):
        _record(prompt_length="long")
    with pytest.raises(ValidationError):
        _record(purpose="chat")
    record = _record(strong_id="H1", partition="alef")
    outcome = NounEnrichment(
        strong_id="H1",
        model="m",
        prompt_version="v1",
        params_hash="p",
        backend="remote",
        ok=True,
        insight=NounInsight(insight="x", themes=["t"], confidence=0.5),
        record_id=record.id,
    )
    batch = EnrichmentBatch(records=[record], enrichments=[outcome])
    again = EnrichmentBatch.model_validate_json(batch.model_dump_json())
    assert again.records == [record] and again.enrichments == [outcome]
    assert AgentRunRecord.model_validate_json(record.model_dump_json()) == record
    assert record.model_dump(mode="json")["args"]["strong_id"] == "H1"
    moved = record.model_copy(update={"tool": "lm_studio"})
    assert (moved.tool, moved.id, record.tool) == ("lm_studio", record.id, "remote_llm")
    assert not hasattr(record, "__dict__")  # slotted: no per-instance dict
