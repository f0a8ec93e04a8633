"""Where the shipped configuration lives: inside the wheel (``cds_service/_config``) or, when running from a
source checkout or an editable install, the repository's ``config/`` folder."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    installed = _PACKAGE_DIR / "_config"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / "config"


def config_path(name: str) -> Path:
    return config_dir() / name


def examples_dir() -> Path:
    """The synthetic example patients (``examples/patients``), installed or in the checkout."""
    installed = _PACKAGE_DIR / "_examples" / "patients"
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / "examples" / "patients"
