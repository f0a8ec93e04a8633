"""The CDS Hooks endpoints over HTTP (Flask test client): discovery, service call, errors, CORS."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.builders import (
    assert_valid_cds,
    condition,
    hook_request,
    obs,
    patient,
    qty,
)
from tests.http_support import FEEDBACK_URL, SERVICE_URL, AppFactory, Hook
from tests.synthetic_patients import nxp2_positive

FATAL = [
    patient(),
    nxp2_positive(),
    condition("M33.00"),
    condition("R60.0"),
    condition("L98.499"),
    obs("39156-5", **qty(13.0, "kg/m2")),
]


def assert_outcome(response: TestResponse, status: int) -> dict[str, Any]:
    """The response has the status and a FHIR OperationOutcome body (and no traceback)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body: dict[str, Any] = response.get_json(force=True)
    OperationOutcome.model_validate(body)
    assert "Traceback" not in response.get_data(as_text=True)
    return body


# -- discovery -----------------------------------------------------------------------------------------


def test_discovery_lists_the_service(client: FlaskClient) -> None:
    """GET /cds-services lists nxp2-jdm-risk on patient-view and validates against the schema."""
    body = client.get("/cds-services").get_json()
    assert_valid_cds("discoveryResponse", body)
    (service,) = body["services"]
    assert (service["id"], service["hook"], sorted(service["prefetch"])) == (
        "nxp2-jdm-risk",
        "patient-view",
        ["conditions", "laboratory", "observations", "patient"],
    )
    assert service["title"]
    assert service["description"]
    assert service["usageRequirements"]


def test_prefetch_templates_stay_within_the_query_restrictions(client: FlaskClient) -> None:
    """Templates are a read and type searches by patient reference and token codes only."""
    prefetch = client.get("/cds-services").get_json()["services"][0]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["conditions"] == "Condition?patient={{context.patientId}}"
    query = parse_qs(urlsplit(prefetch["observations"]).query)
    assert (urlsplit(prefetch["observations"]).path, sorted(query)) == ("Observation", ["code", "patient"])
    assert query["patient"] == ["{{context.patientId}}"]


def test_observation_template_has_the_value_set_codes(client: FlaskClient) -> None:
    """The Observation template asks for every LOINC/SNOMED code the predictors use, and no ICD-10 code."""
    codes = parse_qs(urlsplit(client.get("/cds-services").get_json()["services"][0]["prefetch"]["observations"]).query)
    tokens = codes["code"][0].split(",")
    assert {"http://loinc.org|2276-4", "http://loinc.org|54218-3", "http://snomed.info/sct|267038008"} <= set(tokens)
    assert not [t for t in tokens if "icd-10" in t]


def test_local_codes_reach_the_prefetch_template(make_app: AppFactory) -> None:
    """A site's local anti-NXP2 code appears in the advertised Observation template."""
    app = make_app(mappings={"local_codes": {"anti_nxp2_positive": ["urn:oid:1.2.3|NXP2-LOCAL"]}})
    template = app.test_client().get("/cds-services").get_json()["services"][0]["prefetch"]["observations"]
    assert "urn:oid:1.2.3|NXP2-LOCAL" in template


# -- the service call ----------------------------------------------------------------------------------


def test_service_call_answers_cards(hook: Hook) -> None:
    """A complete prefetch gives a schema-valid response with the expected cards."""
    response = hook.call(*FATAL)
    assert response.status_code == 200
    body = response.get_json()
    assert_valid_cds("serviceResponse", body)
    assert [c["indicator"] for c in body["cards"]] == ["warning", "critical"]


def test_no_cards_is_an_empty_list(hook: Hook) -> None:
    """A patient the model does not apply to gets 200 with an empty cards array."""
    body = hook.call(patient()).get_json()
    assert body == {"cards": []}


def test_cds_hooks_1_0_request_is_accepted(hook: Hook) -> None:
    """A 1.0-style request (no fhirAuthorization.patient, extra unknown fields) is answered like a 2.0 one."""
    request = hook_request(FATAL) | {"user": "Practitioner/legacy", "fhirServer": "https://not-used.example.org"}
    assert hook.send(request).status_code == 200


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"hook": "patient-view", "context": {"userId": "Practitioner/1", "patientId": "p"}}, "hookInstance"),
        ({"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1"}}, "context.patientId"),
        ({"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "p"}}, "context.userId"),
        (
            {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Nurse/1", "patientId": "p"}},
            "context.userId",
        ),
        (
            {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "a b"}},
            "context.patientId",
        ),
        ({"hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"}}, "hook"),
        ({"hook": "patient-view", "hookInstance": "x"}, "context"),
        (
            {
                "hook": "patient-view",
                "hookInstance": "x",
                "context": {"userId": "Practitioner/1", "patientId": "p"},
                "fhirAuthorization": {
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 30,
                    "scope": "s",
                    "subject": "c",
                },
            },
            "fhirAuthorization requires fhirServer",
        ),
        (
            {
                "hook": "patient-view",
                "hookInstance": "x",
                "context": {"userId": "Practitioner/1", "patientId": "p"},
                "prefetch": {"observations": [1, 2]},
            },
            "prefetch.observations",
        ),
    ],
    ids=[
        "no-hook-instance",
        "no-patient",
        "no-user",
        "bad-user",
        "bad-patient-id",
        "no-hook",
        "no-context",
        "auth-without-server",
        "prefetch-not-resource",
    ],
)
def test_invalid_request_is_400(hook: Hook, document: dict[str, Any], where: str) -> None:
    """An invalid request gets 400 with an OperationOutcome naming the field."""
    body = assert_outcome(hook.send(document), 400)
    assert re.search(re.escape(where), str(body["issue"]))


def test_other_hook_is_400(hook: Hook) -> None:
    """A hook other than patient-view is refused with 400."""
    document = hook_request(FATAL) | {"hook": "order-sign"}
    body = assert_outcome(hook.send(document), 400)
    assert body["issue"][0]["expression"] == ["hook"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]", b"", b'"a string"', b"null"])
def test_malformed_body_is_400(client: FlaskClient, raw: bytes) -> None:
    """Malformed JSON, a JSON array or scalar, or an empty body gets 400."""
    assert_outcome(client.post(SERVICE_URL, data=raw, content_type="application/json"), 400)


def test_unknown_service_is_404(hook: Hook) -> None:
    """POST to an unknown service id gets 404."""
    assert_outcome(hook.send(hook_request(FATAL), url="/cds-services/something-else"), 404)


def test_unknown_path_is_404(client: FlaskClient) -> None:
    """Any other path gets 404 with an OperationOutcome."""
    assert_outcome(client.get("/nothing/here"), 404)


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", SERVICE_URL), ("PUT", SERVICE_URL), ("DELETE", "/cds-services"), ("GET", FEEDBACK_URL)],
)
def test_wrong_method_is_405(client: FlaskClient, method: str, url: str) -> None:
    """A method an endpoint does not support gets 405 with an Allow header."""
    response = client.open(url, method=method)
    assert_outcome(response, 405)
    assert response.headers.get("Allow")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_not_json_is_415(client: FlaskClient, content_type: str) -> None:
    """A body that is not declared as JSON gets 415."""
    assert_outcome(client.post(SERVICE_URL, data=b"{}", content_type=content_type), 415)


def test_body_over_the_limit_is_413(make_app: AppFactory) -> None:
    """A body larger than max_body_bytes gets 413."""
    assert_outcome(Hook(make_app(max_body_bytes=2_000)).call(*FATAL), 413)


def test_fhir_json_content_type_is_accepted(client: FlaskClient) -> None:
    """application/fhir+json bodies are accepted like application/json."""
    response = client.post(SERVICE_URL, data=orjson.dumps(hook_request(FATAL)), content_type="application/fhir+json")
    assert response.status_code == 200


# -- CORS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "method"), [("/cds-services", "GET"), (SERVICE_URL, "POST"), (FEEDBACK_URL, "POST")])
def test_cors_preflight(client: FlaskClient, url: str, method: str) -> None:
    """Preflight on every endpoint allows the method and the Authorization and Content-Type headers."""
    response = client.options(
        url,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    assert method in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed


def test_cors_on_actual_response(client: FlaskClient) -> None:
    """Actual responses carry the CORS header too."""
    response = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")


def test_cors_origins_are_configurable(make_app: AppFactory) -> None:
    """With an origin allowlist, other origins get no CORS header."""
    client = make_app(cors={"allowed_origins": ["https://ehr.example.org"]}).test_client()
    allowed = client.get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    other = client.get("/cds-services", headers={"Origin": "https://evil.example.com"})
    assert allowed.headers.get("Access-Control-Allow-Origin") == "https://ehr.example.org"
    assert "Access-Control-Allow-Origin" not in other.headers
