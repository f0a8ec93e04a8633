"""Fuzzing: no input, however malformed, gets a 5xx.

- schemathesis generates valid and invalid requests for every operation of the service's own /openapi.json,
  with authentication off (to reach the deepest code) and on (random tokens);
- hypothesis throws arbitrary JSON at the hook's prefetch and at the mapping stage directly.

Fixed seed and bounded examples (derandomize) so CI is repeatable.
"""

from __future__ import annotations

import tempfile
from typing import Any

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from cds_service.core.engine import Engine
from cds_service.settings import load_settings
from cds_service.web.app import create_app
from fhir_mappings import extract_findings
from tests.builders import AT, PID, hook_request, obs, patient, qty
from tests.http_support import SERVICE_URL

FUZZ = settings(
    max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


def _app(auth: dict[str, Any]) -> Flask:
    folder = tempfile.mkdtemp(prefix="nxp2-fuzz-")
    settings_ = load_settings(database_url=f"sqlite:///{folder}/fuzz.sqlite3", auth=auth, max_body_bytes=200_000)
    return create_app(settings_, migrate=True)


def _schema(app: Flask) -> Any:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True)
    return schema


OPEN_APP = _app({"mode": "disabled"})
GUARDED_APP = _app(
    {
        "mode": "required",
        "issuers": [{"iss": "https://ehr.example.org", "jwks_url": "https://127.0.0.1:9/jwks"}],
        "jwks_timeout_seconds": 0.2,
    }
)
OPEN = _schema(OPEN_APP)
GUARDED = _schema(GUARDED_APP)


@OPEN.parametrize()  # type: ignore[untyped-decorator]  # schemathesis decorators are untyped
@FUZZ
def test_no_5xx_without_authentication(case: Any) -> None:
    """Generated valid and invalid requests never get a 5xx (authentication off)."""
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:300])


@GUARDED.parametrize()  # type: ignore[untyped-decorator]
@FUZZ
def test_no_5xx_with_authentication_required(case: Any) -> None:
    """With authentication required, generated requests (random or no tokens) get 401 or 4xx, never a 5xx."""
    response = case.call()
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
def test_mapping_never_raises(resources: list[Any]) -> None:
    """The mapping stage reads any JSON without raising and accounts for every resource it saw."""
    engine = _engine()
    findings = extract_findings(resources, patient_id=PID, at=AT, terminology=engine.terminology, rules=engine.rules)
    assert findings.resources_seen == findings.resources_used + sum(findings.skipped.values()) + findings.malformed


@given(key=st.sampled_from(["patient", "observations", "conditions"]), value=FHIRISH)
@FUZZ
def test_hook_never_5xx_on_any_prefetch_value(key: str, value: Any) -> None:
    """Any JSON in a prefetch key gets a 2xx or 4xx answer."""
    document = hook_request([patient(), obs("2276-4", **qty(300, "ng/mL"))])
    document["prefetch"][key] = value
    response = OPEN_APP.test_client().post(SERVICE_URL, json=document)
    assert response.status_code < 500


@given(body=JSON)
@FUZZ
def test_hook_never_5xx_on_any_body(body: Any) -> None:
    """Any JSON body gets a 4xx (or, if it happens to be a valid request, 2xx)."""
    response = OPEN_APP.test_client().post(SERVICE_URL, json=body)
    assert response.status_code < 500


_ENGINE: list[Engine] = []


def _engine() -> Engine:
    if not _ENGINE:
        _ENGINE.append(Engine.load())
    return _ENGINE[0]
