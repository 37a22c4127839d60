"""The one function that picks the resources a code location gets, keyed by the names of
`gemantria_dag.names` (a route's resource key is the route's name)."""

from __future__ import annotations

from typing import Any

from gemantria_dag.names import CONTROL_PLANE_IO_MANAGER, ENGINE, LM_STUDIO, REMOTE
from gemantria_dag.settings import Settings
from resources.bible_db import BibleDatabase
from resources.control_plane_db import ControlPlaneDatabase
from resources.io_managers.factory import ControlPlaneIOManagerFactory
from resources.llm.engine import EmbeddedEngineResource
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource


def build_resources(settings: Settings) -> dict[str, Any]:
    """{resource key: resource} for `Definitions`, configured from `settings` (secrets stay in the settings)."""
    return {
        "bible_db": BibleDatabase(path=str(settings.bible_db_path)),
        "control_plane_db": ControlPlaneDatabase(),
        LM_STUDIO: LMStudioResource.from_settings(settings),
        REMOTE: RemoteLLMResource.from_settings(settings),
        ENGINE: EmbeddedEngineResource.from_settings(settings),
        # DB on -> control.agent_run (spooling if it drops); GEMATRIA_DSN=off -> the no-op manager.
        CONTROL_PLANE_IO_MANAGER: ControlPlaneIOManagerFactory(),
    }
