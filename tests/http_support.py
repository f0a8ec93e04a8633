"""Building the application for HTTP tests from the factory, and the actions a test takes on it.

The actions are the steps every HTTP test repeats, written once (as the ``AuthActions`` of Flask's tutorial):
``hook.call(patient(), ...)`` posts a patient-view request, ``feedback.post(card)`` posts feedback on a card. The
``hook`` and ``feedback`` fixtures act on ``client`` (the default app); ``Hook(app)`` and ``Feedback(app)`` act on
an app a test built with ``make_app``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
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
from cds_service.web.app import close_app, configure_process, create_app
from tests.builders import AT, Json, hook_request

SERVICE_URL = "/cds-services/nxp2-jdm-risk"
FEEDBACK_URL = SERVICE_URL + "/feedback"
AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path, engine: Engine) -> Iterator[AppFactory]:
    """Build an app with settings overrides, a fresh migrated SQLite database (unless ``database_url`` is given),
    the session engine (unless the overrides change the mappings or the knowledge base), authentication disabled
    (unless ``auth`` is given), and the evaluation clock fixed at the synthetic patients' time. Afterwards each app
    is closed (``close_app``), then its recorder and its store."""
    apps: list[Flask] = []
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
        app = create_app(settings, engine=shared, store=store, recorder=recorder, clock=clock, migrate=True)
        apps.append(app)
        return app

    yield build
    for app in apps:
        close_app(app)
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


def _client(target: Flask | FlaskClient) -> FlaskClient:
    return target.test_client() if isinstance(target, Flask) else target


class Hook:
    """Calling the service's hook as an EHR does."""

    def __init__(self, target: Flask | FlaskClient) -> None:
        self.client = _client(target)

    def call(self, *resources: Json, headers: Mapping[str, str] | None = None, **request: Any) -> TestResponse:
        """POST a patient-view request whose prefetch holds ``resources`` (``request``: the keywords of
        :func:`tests.builders.hook_request`, ``pid`` and ``hook_instance``)."""
        return self.send(hook_request(list(resources), **request), headers=headers)

    def send(self, document: Any, *, headers: Mapping[str, str] | None = None, url: str = SERVICE_URL) -> TestResponse:
        """POST ``document`` (any JSON) to the service as it is."""
        return self.client.post(url, json=document, headers=dict(headers or {}))

    def send_bytes(
        self, body: bytes, *, content_type: str = "application/json", headers: Mapping[str, str] | None = None
    ) -> TestResponse:
        """POST ``body`` to the service byte for byte."""
        return self.client.post(SERVICE_URL, data=body, content_type=content_type, headers=dict(headers or {}))

    def cards(self, *resources: Json, headers: Mapping[str, str] | None = None, **request: Any) -> list[Json]:
        """The cards the service answers for this chart (the call must answer 200)."""
        response = self.call(*resources, headers=headers, **request)
        assert response.status_code == 200, response.get_data(as_text=True)
        cards: list[Json] = response.get_json()["cards"]
        return cards


def feedback_item(card: object = None, outcome: object = "overridden", **fields: Any) -> Json:
    """One feedback entry on ``card`` (a new uuid unless given), at 12:05 on the evaluation day; ``fields`` are added
    as is (``overrideReason=...``, ``acceptedSuggestions=...``, ``outcomeTimestamp=...``). Any value may be given,
    a wrong one included."""
    item: Json = {
        "card": str(uuid.uuid4()) if card is None else card,
        "outcome": outcome,
        "outcomeTimestamp": "2026-11-24T12:05:00Z",
    }
    return item | fields


def feedback_document(card: object = None, outcome: object = "overridden", **fields: Any) -> Json:
    """A feedback request holding the one entry :func:`feedback_item` makes of these arguments."""
    return {"feedback": [feedback_item(card, outcome, **fields)]}


class Feedback:
    """Posting feedback on cards as an EHR does."""

    def __init__(self, target: Flask | FlaskClient) -> None:
        self.client = _client(target)

    def post(
        self,
        card: str | None = None,
        outcome: str = "overridden",
        *,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> TestResponse:
        """POST one feedback entry (see :func:`feedback_item`) and return the answer."""
        return self.send(feedback_document(card, outcome, **fields), headers=headers)

    def send(self, document: Any, *, headers: Mapping[str, str] | None = None, url: str = FEEDBACK_URL) -> TestResponse:
        """POST ``document`` (any JSON) to the feedback endpoint as it is."""
        return self.client.post(url, json=document, headers=dict(headers or {}))


@pytest.fixture
def hook(client: FlaskClient) -> Hook:
    """Calls of the default app's hook."""
    return Hook(client)


@pytest.fixture
def feedback(client: FlaskClient) -> Feedback:
    """Feedback to the default app (the same one ``hook`` calls)."""
    return Feedback(client)


def runtime_of(app: Flask) -> Any:
    return app.extensions["nxp2_cds"]
