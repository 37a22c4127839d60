"""The lexicon domain: source nouns and their gematria."""

from dagster import Definitions, define_asset_job

from assets.hebrew_nouns import hebrew_nouns
from assets.noun_gematria import noun_gematria
from gemantria_dag.names import GEMATRIA_JOB

gematria_job = define_asset_job(
    GEMATRIA_JOB,
    selection=[hebrew_nouns, noun_gematria],
    description="Read the common nouns from the source and compute their gematria.",
)

defs = Definitions(assets=[hebrew_nouns, noun_gematria], jobs=[gematria_job])
