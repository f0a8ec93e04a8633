"""What every ``nxp2-cds`` command shares: the one way to fail (a line on stderr, an exit code, no traceback), the
settings and the engine loaded with that failure."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from cds_service.core.engine import Engine
from cds_service.core.knowledge import KnowledgeError
from cds_service.settings import Settings, SettingsError, load_settings

USAGE = 2
"""The exit code of a command that cannot run as asked (bad option, bad configuration, unreachable database)."""
FAILED = 1
"""The exit code of a command that ran and found a problem (a call that failed, a check that did not pass)."""


def fail(message: str, code: int = USAGE) -> NoReturn:
    """Print ``nxp2-cds: <message>`` (whitespace collapsed to one line) on stderr and exit with ``code``."""
    click.echo(f"nxp2-cds: {' '.join(message.split())}", err=True)
    sys.exit(code)


def settings_or_fail() -> Settings:
    """The settings from every layer, or a one-line failure naming the key."""
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


def engine_or_fail(loaded: Settings) -> Engine:
    """The engine for ``loaded`` (knowledge base, value sets, language), or a one-line failure naming the file."""
    try:
        return Engine.load(loaded.knowledge_file, loaded.mappings.local_codes, language=loaded.cards.language)
    except KnowledgeError as exc:
        fail(str(exc))
