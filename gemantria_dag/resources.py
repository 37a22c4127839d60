"""The one function that picks the resources a code location gets."""

from __future__ import annotations

from typing import Any

from gemantria_dag.settings import Settings
from resources.bible_db import BibleDatabase
from resources.control_plane_db import ControlPlaneDatabase
from resources.io_managers.factory import ControlPlaneIOManagerFactory
from resources.llm.lm_studio import LMStudioResource
from resources.llm.remote import RemoteLLMResource


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "bible_db": BibleDatabase(path=str(settings.bible_db_path)),
        "control_plane_db": ControlPlaneDatabase(),
        "lm_studio": LMStudioResource.from_settings(settings),
        "remote_llm": RemoteLLMResource.from_settings(settings),
        # DB on -> control.agent_run (spooling if it drops); GEMATRIA_DSN=off -> the no-op manager.
        "control_plane_io_manager": ControlPlaneIOManagerFactory(),
    }
