"""The enrichment domain: the routed LLM asset, its job and the routing sensor that drives the job."""

from dagster import Definitions, define_asset_job

from assets.lm_routing_sensor import lm_routing_sensor
from assets.noun_enrichments import noun_enrichments
from gemantria_dag.enrichment.partitions import letter_partitions
from gemantria_dag.names import ENRICHMENT_JOB

enrichment_job = define_asset_job(
    ENRICHMENT_JOB,
    selection=[noun_enrichments],
    partitions_def=letter_partitions,
    description="Enrich nouns with LLM insights on the routed backend (one partition per Hebrew letter).",
)

defs = Definitions(assets=[noun_enrichments], jobs=[enrichment_job], sensors=[lm_routing_sensor])
