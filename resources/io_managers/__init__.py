"""IO managers that persist enrichment call records to the control plane (or skip them when it is off)."""

from resources.io_managers.control_plane import ControlPlaneIOManager
from resources.io_managers.factory import ControlPlaneIOManagerFactory, store_for
from resources.io_managers.noop_control_plane import NoOpControlPlaneIOManager

__all__ = ["ControlPlaneIOManager", "ControlPlaneIOManagerFactory", "NoOpControlPlaneIOManager", "store_for"]
