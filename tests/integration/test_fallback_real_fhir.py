"""Against a real FHIR R4 engine (Medplum's, in memory): the same patient through prefetch and through the
service's own fetching yields the same assessment, and the fallback costs one round trip."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from cds_service.contracts import EXTENSION_KEY
from tests.builders import LOCAL, SCT, assert_valid_cds, condition, obs, patient, qty, server_hook_request
from tests.fhir_server.launcher import FhirTestServer
from tests.http_support import SERVICE_URL, AppFactory, runtime_of
from tests.synthetic_patients import nxp2_positive

PID = "medplum-child-1"
SITE_SETTINGS: dict[str, Any] = {
    # the site's own anti-NXP2 code: it reaches the prefetch templates and the fallback queries alike
    "mappings": {"local_codes": {"anti_nxp2_positive": [f"{LOCAL}|MYO-NXP2"]}},
}


def load_patient(base: str) -> None:
    """Store a child with the fatal pattern plus unrelated data, as one transaction with urn:uuid references."""
    patient_url = "urn:uuid:5f0b9a70-0000-4000-8000-00000000000a"
    resources = [
        nxp2_positive(pid=PID),
        obs("39156-5", pid=PID, **qty(13.2, "kg/m2")),
        obs("5048-4", pid=PID, valueString="1:640"),
        obs("14723-1", pid=PID, **qty(520, "pmol/L")),
        obs("8867-4", pid=PID, **qty(118, "/min")),
        obs("267038008", system=SCT, pid=PID, valueBoolean=True),
        condition("M33.02", pid=PID),
        condition("L98.499", pid=PID),
        condition("J45.909", pid=PID),
    ]
    entries = [
        {"fullUrl": patient_url, "resource": patient(pid=PID), "request": {"method": "PUT", "url": f"Patient/{PID}"}}
    ]
    for resource in resources:
        body = {k: v for k, v in resource.items() if k != "id"} | {"subject": {"reference": f"Patient/{PID}"}}
        entries.append({"resource": body, "request": {"method": "POST", "url": resource["resourceType"]}})
    response = requests.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, timeout=10)
    response.raise_for_status()


def prefetch_like_an_ehr(app: Flask, base: str) -> dict[str, Any]:
    """What a CDS client does: run each discovery template against its FHIR server."""
    prefetch = {}
    for key, template in runtime_of(app).templates.items():
        url = f"{base}/{template.replace('{{context.patientId}}', PID)}"
        response = requests.get(url, headers={"Accept": "application/fhir+json"}, timeout=10)
        response.raise_for_status()
        prefetch[key] = response.json()
    return prefetch


def hook(base: str, prefetch: dict[str, Any] | None) -> dict[str, Any]:
    return server_hook_request(
        base, prefetch, pid=PID, hook_instance="3c1f6f0e-8f7a-4d7b-9d9e-3f1a2b3c4d5e", user="Practitioner/p1"
    )


def assessment(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_cds("serviceResponse", response.get_json())
    return [
        {k: v for k, v in card["extension"][EXTENSION_KEY].items() if k != "evaluatedAt"}
        | {"indicator": card["indicator"], "summary": card["summary"]}
        for card in response.get_json()["cards"]
    ]


def test_prefetch_and_fallback_give_the_same_assessment(
    make_app: AppFactory, fhir_server: FhirTestServer, fhir_base: str
) -> None:
    """The same patient evaluated from prefetch and from the service's own queries gets identical cards."""
    load_patient(fhir_base)
    app = make_app(fhir={"allowed_servers": [fhir_base], "allow_http": True}, **SITE_SETTINGS)
    client = app.test_client()
    by_prefetch = assessment(client.post(SERVICE_URL, json=hook(fhir_base, prefetch_like_an_ehr(app, fhir_base))))
    by_fallback = assessment(client.post(SERVICE_URL, json=hook(fhir_base, None)))
    assert by_prefetch == by_fallback
    assert [card["tier"] for card in by_fallback] == ["warning", "critical"]


def test_fallback_costs_one_round_trip(make_app: AppFactory, fhir_server: FhirTestServer, fhir_base: str) -> None:
    """With no prefetch at all, the service asks the FHIR server once (one batch of three searches)."""
    load_patient(fhir_base)
    app = make_app(fhir={"allowed_servers": [fhir_base], "allow_http": True}, **SITE_SETTINGS)
    before = fhir_server.stats()["requests"]
    response = app.test_client().post(SERVICE_URL, json=hook(fhir_base, None))
    assert response.status_code == 200
    assert fhir_server.stats()["requests"] - before == 1
