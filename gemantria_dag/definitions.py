"""The code location: per-domain Definitions merged, resources chosen in one place."""

from __future__ import annotations

from dagster import Definitions

import assets.enrichment
import assets.lexicon
from gemantria_dag.resources import build_resources
from gemantria_dag.settings import get_settings

defs = Definitions.merge(
    assets.lexicon.defs,
    assets.enrichment.defs,
    Definitions(resources=build_resources(get_settings())),
)
