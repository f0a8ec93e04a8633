"""Shared fixtures: the engine built from the shipped knowledge base and value sets."""

from __future__ import annotations

import pytest

from cds_service.engine import Engine
from cds_service.knowledge import KnowledgeBase, load_knowledge
from fhir_mappings import Terminology

pytest_plugins = ["tests.http_support", "tests.db_fixtures"]


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The engine exactly as the service loads it with the default configuration."""
    return Engine.load()


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
