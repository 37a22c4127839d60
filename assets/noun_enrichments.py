"""LLM-written insights for each noun, routed by health, every call recorded: a sequence of the named
steps of `gemantria_dag.enrichment.steps`."""

import pandas as pd
from dagster import AssetExecutionContext, BackfillPolicy, asset

from gemantria_dag.enrichment import steps
from gemantria_dag.enrichment.config import EnrichmentConfig
from gemantria_dag.enrichment.partitions import letter_partitions
from gemantria_dag.names import CONTROL_PLANE_IO_MANAGER, ENGINE, LM_STUDIO, NOUN_ENRICHMENTS, REMOTE
from gemantria_dag.settings import get_settings
from resources.io_managers.factory import store_for
from resources.llm.engine import EmbeddedEngineResource
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource


@asset(
    name=NOUN_ENRICHMENTS,
    group_name="enrichment",
    partitions_def=letter_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    io_manager_key=CONTROL_PLANE_IO_MANAGER,
    pool="llm_enrichment",
    kinds={"openai", "postgres"},
    description="Each noun's theological/lexical insight (JSON: insight, themes, confidence) from the routed LLM.",
    check_specs=steps.check_specs(),
)
def noun_enrichments(
    context: AssetExecutionContext,
    config: EnrichmentConfig,
    noun_gematria: pd.DataFrame,
    lm_studio: LMStudioResource,
    remote: RemoteLLMResource,
    engine: EmbeddedEngineResource,
):  # no annotation: with check_specs Dagster would type the output as Nothing
    settings = get_settings()
    backends = {LM_STUDIO: lm_studio, REMOTE: remote, ENGINE: engine}
    decision = steps.decide_route(config, backends, settings)
    context.log.info("routing (%s): %s", config.decided_by, decision.summary())
    steps.tag_run(context, decision)

    store = store_for(settings, context.instance)
    plan = steps.plan_work(noun_gematria, context.partition_keys, config, decision, store)
    steps.reap_dead_runs(context, store.last_recovery.dead_runs)
    context.log.info(plan.summary(decision.model, config.prompt_version))

    runner = steps.make_runner(context, config, decision, plan, backends, settings, store)
    batch = steps.run_calls(runner, plan.todo, backends.values(), context.log.warning)
    return steps.build_result(batch, plan, runner, config, decision, context.log.error)
