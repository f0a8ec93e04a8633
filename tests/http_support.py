"""Building the application for HTTP tests, and small request helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cds_service.core.engine import Engine
from cds_service.settings import load_settings
from cds_service.store.recorder import CardRecorder
from cds_service.store.store import Store
from cds_service.web.app import configure_process, create_app
from tests.builders import AT

SERVICE_URL = "/cds-services/nxp2-jdm-risk"
FEEDBACK_URL = SERVICE_URL + "/feedback"
AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path, engine: Engine) -> Iterator[AppFactory]:
    """Build an app with settings overrides, a fresh migrated SQLite database (unless ``database_url`` is given),
    the session engine (unless the overrides change the mappings or the knowledge base), authentication disabled
    (unless ``auth`` is given), and the evaluation clock fixed at the synthetic patients' time."""
    stores: list[Store] = []
    recorders: list[CardRecorder] = []

    def build(clock: Callable[[], datetime] = lambda: AT, **overrides: Any) -> Flask:
        overrides.setdefault("database_url", f"sqlite:///{tmp_path}/nxp2-cds-{len(stores)}.sqlite3")
        overrides.setdefault("auth", {"mode": "disabled"})
        settings = load_settings(**overrides)
        store = Store(settings.database_url)
        recorder = CardRecorder(store)
        stores.append(store)
        recorders.append(recorder)
        shared = None if {"mappings", "knowledge_file", "cards"} & set(overrides) else engine
        configure_process(settings)  # as a serving process does before it builds its application
        return create_app(settings, engine=shared, store=store, recorder=recorder, clock=clock, migrate=True)

    yield build
    for recorder in recorders:
        recorder.close()
    for store in stores:
        store.dispose()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """The app with default settings (auth as configured by default, SQLite)."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post_json(client: FlaskClient, url: str, document: Any, **kwargs: Any) -> TestResponse:
    return client.post(url, json=document, **kwargs)


def runtime_of(app: Flask) -> Any:
    return app.extensions["nxp2_cds"]
