"""The suite's fixtures, all in this one conftest and its two plugins.

- here: the engine (tests/engines.py, the one engine cache), its knowledge base and terminology, and ``cli``,
  the ``nxp2-cds`` command run in-process (tests/cli_runner.py);
- tests/http_support.py: applications built by the factory (``make_app``, ``app``, ``client``) and the actions
  on them (``hook``, ``feedback``);
- tests/db_fixtures.py: databases (``sqlite_url``, ``postgres_url``, ``database_url``, ``store``).

No module of the suite builds an application or loads an engine at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cds_service.core.engine import Engine
from cds_service.core.knowledge import KnowledgeBase, load_knowledge
from fhir_mappings import Terminology
from tests.cli_runner import Cli
from tests.engines import shared_engine

pytest_plugins = ["tests.http_support", "tests.db_fixtures"]
_SERVICE_ENVIRONMENT = ("NXP2_CDS_", "PROMETHEUS_MULTIPROC_DIR")


@pytest.fixture(autouse=True)
def _service_environment_restored() -> Iterator[None]:
    """`nxp2-cds serve` invoked in-process (CliRunner) hands its workers their settings through the environment
    (NXP2_CDS_SERVER__HOST/PORT, PROMETHEUS_MULTIPROC_DIR): whatever a test leaves there is undone, so no later
    test runs with another test's server address or metrics folder."""
    before = {k: v for k, v in os.environ.items() if k.startswith(_SERVICE_ENVIRONMENT)}
    yield
    for key in [k for k in os.environ if k.startswith(_SERVICE_ENVIRONMENT)]:
        if key not in before:
            del os.environ[key]
    os.environ.update(before)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The engine exactly as the service loads it with the default configuration."""
    return shared_engine()


@pytest.fixture(scope="session")
def knowledge(engine: Engine) -> KnowledgeBase:
    return engine.knowledge


@pytest.fixture(scope="session")
def terminology(engine: Engine) -> Terminology:
    return engine.terminology


@pytest.fixture
def fresh_knowledge() -> KnowledgeBase:
    """A knowledge base loaded anew (for tests that build variants of it)."""
    return load_knowledge()


@pytest.fixture
def cli() -> Cli:
    """``nxp2-cds`` run in-process: ``cli("migrate")`` returns click's Result."""
    return Cli()
