"""Fixtures for tests against a real FHIR R4 engine (Medplum's, in memory; see tests/fhir_server).

The server is started once per session. Without it installed (``scripts/install-fhir-test-server``)
these tests are skipped, unless ``NXP2_CDS_REQUIRE_FHIR_SERVER=1`` (set by CI): then they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fhir_server.launcher import FhirTestServer, node_available

REQUIRE_ENV = "NXP2_CDS_REQUIRE_FHIR_SERVER"


def fhir_server_unavailable_reason() -> str | None:
    """Why the FHIR test server cannot run here, or None."""
    return node_available()


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    """The in-memory FHIR R4 test server, one for the whole session."""
    reason = fhir_server_unavailable_reason()
    if reason is not None:
        message = f"FHIR test server unavailable: {reason}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} (and {REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(message)
    with FhirTestServer() as server:
        yield server


@pytest.fixture
def fhir_base(fhir_server: FhirTestServer) -> str:
    """The FHIR base URL of a server whose store and request counter were just emptied."""
    fhir_server.reset()
    return fhir_server.url
