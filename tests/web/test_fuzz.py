"""Fuzzing: no input, however malformed, gets a 5xx.

- schemathesis generates valid and invalid requests for every operation of the service's own OpenAPI document
  (the one /openapi.json serves, built the same way here so that no app exists at import time), sent to an app
  from the factory with authentication off (to reach the deepest code) and on (random tokens);
- hypothesis throws arbitrary JSON at the hook's prefetch and at the mapping stage directly.

Fixed seed and bounded examples (derandomize) so CI is repeatable.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from cds_service.contracts import HOOK, SERVICE_ID
from cds_service.core.engine import Engine
from cds_service.web import openapi
from fhir_mappings import extract_findings
from tests.builders import AT, PID, hook_request, obs, patient, qty
from tests.http_support import AppFactory, Hook

FUZZ = settings(
    max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


GUARDED_AUTH = {
    "mode": "required",
    "issuers": [{"iss": "https://ehr.example.org", "jwks_url": "https://127.0.0.1:9/jwks"}],
    "jwks_timeout_seconds": 0.2,
}


def _schema(auth_required: bool) -> Any:
    schema = schemathesis.openapi.from_dict(openapi.build(SERVICE_ID, HOOK, auth_required=auth_required))
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True)
    return schema


@pytest.fixture
def open_app(make_app: AppFactory) -> Flask:
    """Authentication off (to reach the deepest code), bodies up to 200 kB."""
    return make_app(max_body_bytes=200_000)


@pytest.fixture
def guarded_app(make_app: AppFactory) -> Flask:
    """Authentication required, by an issuer whose keys cannot be fetched (every token is refused)."""
    return make_app(auth=GUARDED_AUTH, max_body_bytes=200_000)


OPEN = _schema(auth_required=False)
GUARDED = _schema(auth_required=True)


@OPEN.parametrize()  # type: ignore[untyped-decorator]  # schemathesis decorators are untyped
@FUZZ
def test_no_5xx_without_authentication(open_app: Flask, case: Any) -> None:
    """Generated valid and invalid requests never get a 5xx (authentication off)."""
    response = case.call(app=open_app)
    assert response.status_code < 500, (response.status_code, response.text[:300])


@GUARDED.parametrize()  # type: ignore[untyped-decorator]
@FUZZ
def test_no_5xx_with_authentication_required(guarded_app: Flask, case: Any) -> None:
    """With authentication required, generated requests (random or no tokens) get 401 or 4xx, never a 5xx."""
    response = case.call(app=guarded_app)
    assert response.status_code < 500, (response.status_code, response.text[:300])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "resourceType",
        "status",
        "code",
        "coding",
        "system",
        "subject",
        "reference",
        "valueQuantity",
        "value",
        "unit",
        "effectiveDateTime",
        "entry",
        "resource",
        "component",
        "interpretation",
        "clinicalStatus",
        "birthDate",
        "id",
    ]
)
FHIRISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "Observation",
            "Condition",
            "Patient",
            "Bundle",
            "final",
            "http://loinc.org",
            "2276-4",
            f"Patient/{PID}",
            "2026-11-01",
            "ng/mL",
            "1:160",
            "3+",
            "Positive",
        ]
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=40,
)


@given(st.lists(FHIRISH, max_size=6))
@FUZZ
def test_mapping_never_raises(engine: Engine, resources: list[Any]) -> None:
    """The mapping stage reads any JSON without raising and accounts for every resource it saw."""
    findings = extract_findings(resources, patient_id=PID, at=AT, terminology=engine.terminology, rules=engine.rules)
    assert findings.resources_seen == findings.resources_used + sum(findings.skipped.values()) + findings.malformed


@given(key=st.sampled_from(["patient", "observations", "conditions"]), value=FHIRISH)
@FUZZ
def test_hook_never_5xx_on_any_prefetch_value(open_app: Flask, key: str, value: Any) -> None:
    """Any JSON in a prefetch key gets a 2xx or 4xx answer."""
    document = hook_request([patient(), obs("2276-4", **qty(300, "ng/mL"))])
    document["prefetch"][key] = value
    response = Hook(open_app).send(document)
    assert response.status_code < 500


@given(body=JSON)
@FUZZ
def test_hook_never_5xx_on_any_body(open_app: Flask, body: Any) -> None:
    """Any JSON body gets a 4xx (or, if it happens to be a valid request, 2xx)."""
    response = Hook(open_app).send(body)
    assert response.status_code < 500
