"""The control-plane IO managers through real Dagster runs: DB off, DB on, DB unreachable then back."""

from collections.abc import Iterator
from uuid import UUID

import psycopg
import pytest
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    StaticPartitionsDefinition,
    asset,
    build_init_resource_context,
    materialize,
)

from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from gemantria_dag.control_plane.spool import Spool
from gemantria_dag.control_plane.store import LocalStore, PostgresStore
from gemantria_dag.settings import get_settings, reset_settings_cache
from resources.io_managers import (
    ControlPlaneIOManager,
    ControlPlaneIOManagerFactory,
    NoOpControlPlaneIOManager,
    store_for,
)
from tests.fixtures.processes import free_port
from tests.test_control_plane_writer import make_batch, make_outcome, make_record

PARTITIONS = StaticPartitionsDefinition(["א", "ב"])
IO_KEY = "control_plane_io_manager"
PASSWORD = "Sup3rSecretPw"
produced: dict[str, EnrichmentBatch] = {}  # what the assets returned, by asset name


def _batch(name: str, partition: str, offset: int) -> EnrichmentBatch:
    batch = make_batch(4, start=offset)
    failed = make_record(offset + 4, ok=False)
    batch.records.append(failed)
    batch.enrichments.append(make_outcome(failed, ok=False))
    batch.partition = partition
    produced[name] = batch
    return batch


@asset(partitions_def=PARTITIONS, io_manager_key=IO_KEY)
def enrichments(context: AssetExecutionContext) -> EnrichmentBatch:
    return _batch("enrichments", context.partition_key, 0)


@asset(partitions_def=PARTITIONS, io_manager_key=IO_KEY)
def more_enrichments(context: AssetExecutionContext) -> EnrichmentBatch:
    return _batch("more_enrichments", context.partition_key, 100)


@asset(partitions_def=PARTITIONS)
def loaded(enrichments: list[NounEnrichment], more_enrichments: list[NounEnrichment]) -> list[NounEnrichment]:
    return [*enrichments, *more_enrichments]


ASSETS = [enrichments, more_enrichments, loaded]


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


def _run(instance: DagsterInstance, partition: str = "א") -> ExecuteInProcessResult:
    return materialize(
        ASSETS, resources={IO_KEY: ControlPlaneIOManagerFactory()}, instance=instance, partition_key=partition
    )


def _messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def _expected_loaded() -> list[NounEnrichment]:
    return [*produced["enrichments"].all_enrichments, *produced["more_enrichments"].all_enrichments]


def _metadata(result: ExecuteInProcessResult, node: str) -> dict[str, object]:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def _assert_clean(instance: DagsterInstance, result: ExecuteInProcessResult) -> None:
    assert result.success
    failures = [
        e
        for e in instance.all_logs(result.run_id)
        if e.dagster_event is not None and e.dagster_event.event_type == DagsterEventType.STEP_FAILURE
    ]
    assert failures == []
    assert not [m for m in _messages(instance, result.run_id) if "Traceback" in m]


def test_factory_decides_from_settings_alone(
    control_plane_dsn: str, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = build_init_resource_context(instance=instance)
    assert isinstance(ControlPlaneIOManagerFactory().create_io_manager(context), ControlPlaneIOManager)
    assert isinstance(store_for(get_settings(), instance), PostgresStore)
    # An unreachable DSN is still "on": no network at resource init, the write spools instead.
    monkeypatch.setenv("GEMATRIA_DSN", f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db")
    reset_settings_cache()
    assert isinstance(ControlPlaneIOManagerFactory().create_io_manager(context), ControlPlaneIOManager)
    monkeypatch.setenv("GEMATRIA_DSN", "off")
    reset_settings_cache()
    assert isinstance(ControlPlaneIOManagerFactory().create_io_manager(context), NoOpControlPlaneIOManager)
    assert isinstance(store_for(get_settings(), instance), LocalStore)


def test_db_off_run_skips_logging_says_so_once_and_keeps_outcomes(instance: DagsterInstance) -> None:
    assert get_settings().db_mode == "off"
    result = _run(instance)
    _assert_clean(instance, result)
    off = [m for m in _messages(instance, result.run_id) if "control plane is off" in m]
    assert len(off) == 1 and "GEMATRIA_DSN=off" in off[0]  # two outputs, one message
    meta = _metadata(result, "enrichments")
    assert meta["control_plane"] == "off" and meta["control_plane_records_skipped"] == 5
    assert result.output_for_node("loaded") == _expected_loaded()

    # A later run can reuse them: successes and violations (the asset decides what to retry).
    cache = store_for(get_settings(), instance)
    batch = produced["enrichments"]
    ids = [o.strong_id for o in batch.enrichments]
    found = cache.lookup([*ids, "H999"], "qwen2.5-7b", "v1", "p0")
    assert found == {o.strong_id: o for o in batch.enrichments} and len(found) == 5
    assert [o.ok for o in found.values()].count(False) == 1
    assert cache.lookup(ids, "another-model", "v1", "p0") == {}
    assert str(instance.storage_directory()) in cache.where


def test_db_on_run_writes_agent_run_and_loads_back(control_plane_dsn: str, instance: DagsterInstance) -> None:
    result = _run(instance, "ב")
    _assert_clean(instance, result)
    meta = _metadata(result, "enrichments")
    assert (meta["control_plane"], meta["control_plane_records_written"], meta["control_plane_outcomes_written"]) == (
        "on",
        5,
        5,
    )
    assert meta["control_plane_records_spooled"] == 0 and meta["control_plane_seconds"] >= 0
    with psycopg.connect(control_plane_dsn) as conn:
        rows = conn.execute("SELECT id, session_id, args_json->>'partition' FROM control.agent_run").fetchall()
    expected_ids = {r.id for name in ("enrichments", "more_enrichments") for r in produced[name].records}
    assert {r[0] for r in rows} == expected_ids and len(rows) == 10
    assert {r[1] for r in rows} == {UUID(result.run_id)}
    assert result.output_for_node("loaded") == _expected_loaded()  # read back from gematria.noun_enrichment

    cache = store_for(get_settings(), instance)
    batch = produced["more_enrichments"]
    found = cache.lookup([o.strong_id for o in batch.enrichments], "qwen2.5-7b", "v1", "p0")
    assert found == {o.strong_id: o for o in batch.enrichments} and len(found) == 5


def test_unreachable_db_spools_then_next_run_replays(
    control_plane_dsn: str, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMATRIA_DSN", f"postgresql://gemantria:{PASSWORD}@127.0.0.1:{free_port()}/control")
    reset_settings_cache()
    down = _run(instance)
    _assert_clean(instance, down)
    messages = _messages(instance, down.run_id)
    spooled = [m for m in messages if "spooled to" in m]
    assert len(spooled) == 1  # once per run, although both outputs spooled
    assert "Connection refused" in spooled[0] and "pmagent control flush" in spooled[0]
    assert "Fix:" in spooled[0]
    assert not [m for m in messages if PASSWORD in m]
    meta = _metadata(down, "enrichments")
    assert meta["control_plane"] == "spooled" and meta["control_plane_records_spooled"] == 5
    assert PASSWORD not in str(meta)
    assert result_loaded(down) == _expected_loaded()  # served from the spool while the DB is down
    first_ids = {r.id for name in ("enrichments", "more_enrichments") for r in produced[name].records}
    spool = Spool(get_settings().spool_dir)
    assert spool.summary().records == 10

    monkeypatch.setenv("GEMATRIA_DSN", control_plane_dsn)  # the server is back
    reset_settings_cache()
    back = _run(instance, "ב")
    _assert_clean(instance, back)
    assert _metadata(back, "enrichments")["control_plane_records_replayed"] == 10
    assert spool.pending() == []
    second_ids = {r.id for name in ("enrichments", "more_enrichments") for r in produced[name].records}
    with psycopg.connect(control_plane_dsn) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM control.agent_run")]
        sessions = dict(conn.execute("SELECT session_id, count(*) FROM control.agent_run GROUP BY 1").fetchall())
    assert len(ids) == 20 and set(ids) == first_ids | second_ids
    assert sessions == {UUID(down.run_id): 10, UUID(back.run_id): 10}


def result_loaded(result: ExecuteInProcessResult) -> list[NounEnrichment]:
    return result.output_for_node("loaded")


# ---- one run for several partitions (a single-run backfill) ----


@asset(partitions_def=PARTITIONS, io_manager_key=IO_KEY, backfill_policy=BackfillPolicy.single_run())
def span_enrichments(context: AssetExecutionContext) -> EnrichmentBatch:
    batch = EnrichmentBatch()
    for n, partition in enumerate(context.partition_keys):
        part = make_batch(2, start=10 * n, partition=partition)
        batch.records += part.records
        batch.enrichments += part.enrichments
    batch.reused = [make_outcome(make_record(99))]  # from an earlier run: no call record here
    produced["span"] = batch
    return batch


span_seen: list[list[str]] = []  # what span_loaded received, run by run


@asset(partitions_def=PARTITIONS, backfill_policy=BackfillPolicy.single_run())
def span_loaded(span_enrichments: list[NounEnrichment]) -> None:
    # `-> None`: the default IO manager cannot store one value for several partitions.
    span_seen.append([o.strong_id for o in span_enrichments])


def test_one_run_for_two_partitions_files_each_outcome_under_its_partition(instance: DagsterInstance) -> None:
    resources = {IO_KEY: ControlPlaneIOManagerFactory()}
    both = materialize(
        [span_enrichments, span_loaded],
        resources=resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": "א", "dagster/asset_partition_range_end": "ב"},
    )
    _assert_clean(instance, both)
    assert span_seen[-1] == ["H99", "H0", "H1", "H10", "H11"]  # both partitions; the reused outcome once
    one = materialize(
        [span_enrichments, span_loaded],
        selection=[span_loaded],
        resources=resources,
        instance=instance,
        partition_key="ב",
    )
    _assert_clean(instance, one)
    assert span_seen[-1] == ["H99", "H10", "H11"]  # only ב's own outcomes, plus the unattributed one


def test_store_saves_a_batch_outside_an_io_manager(
    control_plane_dsn: str, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(3)
    report = store_for(get_settings(), instance).save_batch(batch, session_id=None)
    assert (report.records_written, report.spooled) == (3, False)
    with psycopg.connect(control_plane_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM control.agent_run").fetchone() == (3,)

    monkeypatch.setenv("GEMATRIA_DSN", f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db")
    reset_settings_cache()
    report = store_for(get_settings(), instance).save_batch(make_batch(2), session_id=None)
    assert report.spooled and PASSWORD not in (report.spool_reason or "")
    assert Spool(get_settings().spool_dir).summary().records == 2

    monkeypatch.setenv("GEMATRIA_DSN", "off")
    reset_settings_cache()
    store = store_for(get_settings(), instance)
    assert store.save_batch(batch, session_id=None).enrichments_written == 3
    assert len(store.lookup(["H0", "H1", "H2"], "qwen2.5-7b", "v1", "p0")) == 3
