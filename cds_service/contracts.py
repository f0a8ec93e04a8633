"""The service's public contract in one place: its identity on the wire (service id, hook, the card extension's key
and version) and the package version. Every module that speaks the contract imports it from here; nothing here
imports anything of the service."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SERVICE_ID = "nxp2-jdm-risk"
"""The CDS service id (``/cds-services/nxp2-jdm-risk``)."""
HOOK = "patient-view"
"""The one hook the service answers."""
EXTENSION_KEY = "nxp2-cds.assessment"
"""The key of the assessment in every card's ``extension`` (README, "The assessment extension")."""
EXTENSION_VERSION = 1
"""The version of that extension's shape."""

try:
    VERSION = version("nxp2-cds")
    """The package version, from its metadata (pyproject.toml is the one place it is written)."""
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    VERSION = "0+unknown"
