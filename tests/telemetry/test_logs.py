"""Structured logs: one JSON object per line with request id, route, status, timing and counts — and nothing that
identifies a patient, no clinical value, no token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from cds_service.kit.client_tokens import ClientKey
from tests.builders import condition, hook_request, obs, patient, qty
from tests.http_support import FEEDBACK_URL, SERVICE_URL, AppFactory
from tests.synthetic_patients import nxp2_positive

PATIENT_ID = "pt-8c1e2f"
SECRETS = ["Zebedee", "Quixote", PATIENT_ID, "2018-07-13", "456.7", "1:1280", "tok-SECRET-9f3a", "declined surgery"]


def chart() -> list[dict[str, Any]]:
    person = patient(pid=PATIENT_ID, birth="2018-07-13") | {"name": [{"family": "Quixote", "given": ["Zebedee"]}]}
    return [
        person,
        nxp2_positive(pid=PATIENT_ID),
        obs("2276-4", pid=PATIENT_ID, **qty(456.7, "ng/mL")),
        obs("5048-4", pid=PATIENT_ID, valueString="1:1280"),
        condition("M33.00", pid=PATIENT_ID),
        condition("R60.0", pid=PATIENT_ID),
    ]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def logged(make_app: AppFactory, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> str:
    """Everything the service logs during a 200, a 412 after a failed fallback, a 400, a feedback and a 401."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    client = app.test_client()
    ok = client.post(SERVICE_URL, json=hook_request(chart(), pid=PATIENT_ID), headers={"X-Request-ID": "req-42"})
    assert ok.status_code == 200

    httpserver.expect_request("/fhir/Condition").respond_with_json({"resourceType": "OperationOutcome"}, status=500)
    failing = hook_request(chart(), pid=PATIENT_ID)
    del failing["prefetch"]["conditions"]
    failing |= {
        "fhirServer": base,
        "fhirAuthorization": {
            "access_token": "tok-SECRET-9f3a",
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "patient/*.read",
            "subject": "c",
        },
    }
    assert client.post(SERVICE_URL, json=failing).status_code == 412

    bad = hook_request(chart(), pid=PATIENT_ID)
    bad["context"]["patientId"] = "Zebedee Quixote 2018-07-13"
    assert client.post(SERVICE_URL, json=bad).status_code == 400

    card = ok.get_json()["cards"][0]["uuid"]
    comment = {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-24T12:00:00Z",
                "overrideReason": {"userComment": "Zebedee Quixote declined surgery"},
            }
        ]
    }
    assert client.post(FEEDBACK_URL, json=comment).status_code == 200

    guarded = make_app(
        auth={
            "mode": "required",
            "issuers": [{"iss": "https://ehr.example.org", "jwks_url": "https://127.0.0.1:9/jwks"}],
            "jwks_timeout_seconds": 0.2,
        }
    )
    token = ClientKey.generate().token(
        iss="https://ehr.example.org", aud="http://localhost" + SERVICE_URL, extra_claims={"patient": PATIENT_ID}
    )
    response = guarded.test_client().post(
        SERVICE_URL, json=hook_request(chart(), pid=PATIENT_ID), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_no_patient_data_or_token_in_logs(logged: str) -> None:
    """Names, the patient id, the birth date, clinical values, the FHIR token and feedback comments never appear."""
    assert [secret for secret in SECRETS if secret in logged] == []


def test_no_client_jwt_in_logs(logged: str) -> None:
    """No JWT (three base64url parts starting eyJ) appears in the logs."""
    assert "eyJ" not in logged


def test_each_request_is_one_structured_line(logged: str) -> None:
    """Every request is logged once as JSON with request id, route, status and duration."""
    requests = [line for line in json_lines(logged) if line.get("event") == "request"]
    assert [r["status"] for r in requests] == [200, 412, 400, 200, 401]
    assert all({"request_id", "route", "duration_ms", "level", "timestamp"} <= set(r) for r in requests)


def test_request_id_is_propagated(logged: str) -> None:
    """A caller's X-Request-ID is used as the request id in the log."""
    assert json_lines(logged)[[line.get("request_id") for line in json_lines(logged)].index("req-42")]["status"] == 200


def test_hook_call_logs_counts(logged: str) -> None:
    """A hook call logs its hook instance, resource counts and card indicators."""
    first = next(line for line in json_lines(logged) if line.get("event") == "request")
    assert (first["hook_instance"], first["resources_seen"], first["cards"]) == (
        "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        6,
        ["warning", "critical"],
    )
