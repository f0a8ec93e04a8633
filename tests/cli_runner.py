"""The ``nxp2-cds`` command run in-process, as the ``cli`` fixture (tests/conftest.py) hands it to tests."""

from __future__ import annotations

from collections.abc import Mapping

from click.testing import CliRunner, Result

from cds_service.cli.main import main


class Cli:
    """``cli("evidence", "verify")`` runs ``nxp2-cds evidence verify`` through click's :class:`CliRunner` and returns
    its :class:`Result` (exit code, stdout and stderr apart)."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, env: Mapping[str, str | None] | None = None) -> Result:
        return self.runner.invoke(main, list(args), input=input, env=env)
