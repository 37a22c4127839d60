"""The code location: per-domain Definitions merged, resources chosen in one place.

The settings are read first: a bad value stops the load with one line naming the variable, in the
Dagster CLI, in `dagster dev` (its log and the UI's code-location error) and in pmagent alike.
"""

from __future__ import annotations

from dagster import Definitions

from gemantria_dag.settings import settings_for_code_location

SETTINGS = settings_for_code_location()

import assets.enrichment  # noqa: E402 - after the settings check: assets read the settings at import
import assets.lexicon  # noqa: E402
from resources.build import build_resources  # noqa: E402

defs = Definitions.merge(
    assets.lexicon.defs,
    assets.enrichment.defs,
    Definitions(resources=build_resources(SETTINGS)),
)
