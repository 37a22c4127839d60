"""The one function that picks the resources a code location gets."""

from __future__ import annotations

from typing import Any

from gemantria_dag.settings import Settings
from resources.bible_db import BibleDatabase
from resources.control_plane_db import ControlPlaneDatabase


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "bible_db": BibleDatabase(path=str(settings.bible_db_path)),
        "control_plane_db": ControlPlaneDatabase(),
    }
