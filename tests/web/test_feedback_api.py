"""Feedback over HTTP: validated, stored before 200 (SQLite and PostgreSQL), repeats stored once, linked to cards."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.builders import assert_valid_cds, condition, hook_request, patient
from tests.http_support import FEEDBACK_URL, SERVICE_URL, AppFactory, runtime_of
from tests.synthetic_patients import nxp2_positive


def feedback_document(card: str, outcome: str = "overridden", **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": "2026-11-24T12:05:00Z"}
    if outcome == "overridden":
        item["overrideReason"] = {
            "reason": {
                "system": "urn:nxp2-cds:CodeSystem:override-reason",
                "code": "already-managed",
                "display": "Already aware; risk is being managed",
            },
            "userComment": "discussed at MDT",
        }
    item.update(extra)
    return {"feedback": [item]}


def stored_rows(database_url: str) -> list[dict[str, Any]]:
    """Feedback rows read through a new connection (not the service's)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(sa.text("SELECT * FROM feedback"))]
    finally:
        engine.dispose()


@pytest.fixture
def db_app(make_app: AppFactory, database_url: str) -> Flask:
    return make_app(database_url=database_url)


def issue_card(app: Flask) -> dict[str, Any]:
    response = app.test_client().post(
        SERVICE_URL, json=hook_request([patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")])
    )
    card: dict[str, Any] = response.get_json()["cards"][0]
    return card


def test_acknowledged_feedback_is_in_the_database(db_app: Flask, database_url: str) -> None:
    """Feedback answered with 200 is already in the database."""
    card = issue_card(db_app)
    document = feedback_document(card["uuid"])
    assert_valid_cds("feedbackRequest", document)
    response = db_app.test_client().post(FEEDBACK_URL, json=document)
    assert response.status_code == 200
    rows = stored_rows(database_url)
    assert [(r["card_uuid"], r["outcome"]) for r in rows] == [(card["uuid"], "overridden")]


def test_repeated_feedback_is_stored_once(db_app: Flask, database_url: str) -> None:
    """The same feedback sent twice is stored once, and the second answer says it was a duplicate."""
    card = issue_card(db_app)
    client = db_app.test_client()
    first = client.post(FEEDBACK_URL, json=feedback_document(card["uuid"])).get_json()
    second = client.post(FEEDBACK_URL, json=feedback_document(card["uuid"])).get_json()
    assert (first, second) == (
        {"received": 1, "stored": 1, "duplicates": 0},
        {"received": 1, "stored": 0, "duplicates": 1},
    )
    assert len(stored_rows(database_url)) == 1


def test_accepted_feedback_names_its_suggestions(db_app: Flask, database_url: str) -> None:
    """Accepted feedback with the accepted suggestion ids is stored."""
    card = issue_card(db_app)
    suggestion = card["suggestions"][0]["uuid"]
    document = feedback_document(card["uuid"], "accepted", acceptedSuggestions=[{"id": suggestion}])
    assert db_app.test_client().post(FEEDBACK_URL, json=document).status_code == 200
    assert [r["outcome"] for r in stored_rows(database_url)] == ["accepted"]


def test_issued_cards_are_recorded_without_patient_data(db_app: Flask, database_url: str) -> None:
    """Each issued card is recorded (uuid, outcome, tier, present predictors) with no patient identifier."""
    card = issue_card(db_app)
    runtime_of(db_app).recorder.flush(10)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(sa.text("SELECT * FROM issued_cards"))]
    finally:
        engine.dispose()
    assert card["uuid"] in [r["uuid"] for r in rows]
    assert "pat-1" not in repr(rows)


@pytest.mark.parametrize(
    "item",
    [
        {"outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:05:00Z"},
        {"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-11-24T12:05:00Z"},
        {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-24T12:05:00Z"},
        {"card": "c", "outcome": "overridden"},
        {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:05:00"},
        {"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"},
        {
            "card": "c",
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-24T12:05:00Z",
            "overrideReason": {"reason": {"code": "x"}},
        },
    ],
    ids=[
        "no-card",
        "bad-outcome",
        "accepted-without-suggestions",
        "no-timestamp",
        "naive-timestamp",
        "bad-timestamp",
        "reason-without-system",
    ],
)
def test_invalid_feedback_is_400(make_app: AppFactory, item: dict[str, Any]) -> None:
    """Feedback that does not follow the spec gets 400 with an OperationOutcome, and nothing is stored."""
    app = make_app()
    response = app.test_client().post(FEEDBACK_URL, json={"feedback": [item]})
    assert response.status_code == 400
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_empty_feedback_list_is_400(make_app: AppFactory) -> None:
    """A feedback request with no items gets 400."""
    assert make_app().test_client().post(FEEDBACK_URL, json={"feedback": []}).status_code == 400


def test_feedback_for_unknown_service_is_404(make_app: AppFactory) -> None:
    """Feedback to a service id that does not exist gets 404."""
    response = make_app().test_client().post("/cds-services/other/feedback", json=feedback_document("x"))
    assert response.status_code == 404
