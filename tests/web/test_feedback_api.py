"""Feedback over HTTP: validated, stored before 200 (SQLite and PostgreSQL), repeats stored once, linked to cards."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.builders import assert_valid_cds, condition, patient
from tests.http_support import AppFactory, Feedback, Hook, feedback_document, runtime_of
from tests.synthetic_patients import nxp2_positive

OVERRIDE_REASON = {
    "reason": {
        "system": "urn:nxp2-cds:CodeSystem:override-reason",
        "code": "already-managed",
        "display": "Already aware; risk is being managed",
    },
    "userComment": "discussed at MDT",
}


def stored_rows(database_url: str, table: str = "feedback") -> list[dict[str, Any]]:
    """The rows of ``table`` read through a new connection (not the service's)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(sa.text(f"SELECT * FROM {table}"))]
    finally:
        engine.dispose()


@pytest.fixture
def db_app(make_app: AppFactory, database_url: str) -> Flask:
    return make_app(database_url=database_url)


def issue_card(app: Flask) -> dict[str, Any]:
    card: dict[str, Any] = Hook(app).cards(patient(), nxp2_positive(), condition("M33.00"), condition("R60.0"))[0]
    return card


def test_acknowledged_feedback_is_in_the_database(db_app: Flask, database_url: str) -> None:
    """Feedback answered with 200 is already in the database."""
    card = issue_card(db_app)
    document = feedback_document(card["uuid"], overrideReason=OVERRIDE_REASON)
    assert_valid_cds("feedbackRequest", document)
    response = Feedback(db_app).send(document)
    assert response.status_code == 200
    rows = stored_rows(database_url)
    assert [(r["card_uuid"], r["outcome"]) for r in rows] == [(card["uuid"], "overridden")]


def test_repeated_feedback_is_stored_once(db_app: Flask, database_url: str) -> None:
    """The same feedback sent twice is stored once, and the second answer says it was a duplicate."""
    card = issue_card(db_app)
    feedback = Feedback(db_app)
    first = feedback.post(card["uuid"], overrideReason=OVERRIDE_REASON).get_json()
    second = feedback.post(card["uuid"], overrideReason=OVERRIDE_REASON).get_json()
    assert (first, second) == (
        {"received": 1, "stored": 1, "duplicates": 0},
        {"received": 1, "stored": 0, "duplicates": 1},
    )
    assert len(stored_rows(database_url)) == 1


def test_accepted_feedback_names_its_suggestions(db_app: Flask, database_url: str) -> None:
    """Accepted feedback with the accepted suggestion ids is stored."""
    card = issue_card(db_app)
    suggestion = card["suggestions"][0]["uuid"]
    response = Feedback(db_app).post(card["uuid"], "accepted", acceptedSuggestions=[{"id": suggestion}])
    assert response.status_code == 200
    assert [r["outcome"] for r in stored_rows(database_url)] == ["accepted"]


def test_issued_cards_are_recorded_without_patient_data(db_app: Flask, database_url: str) -> None:
    """Each issued card is recorded (uuid, outcome, tier, present predictors) with no patient identifier."""
    card = issue_card(db_app)
    runtime_of(db_app).recorder.flush(10)
    rows = stored_rows(database_url, "issued_cards")
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
def test_invalid_feedback_is_400(feedback: Feedback, item: dict[str, Any]) -> None:
    """Feedback that does not follow the spec gets 400 with an OperationOutcome, and nothing is stored."""
    response = feedback.send({"feedback": [item]})
    assert response.status_code == 400
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_empty_feedback_list_is_400(feedback: Feedback) -> None:
    """A feedback request with no items gets 400."""
    assert feedback.send({"feedback": []}).status_code == 400


def test_feedback_for_unknown_service_is_404(feedback: Feedback) -> None:
    """Feedback to a service id that does not exist gets 404."""
    document = feedback_document("x", overrideReason=OVERRIDE_REASON)
    response = feedback.send(document, url="/cds-services/other/feedback")
    assert response.status_code == 404
