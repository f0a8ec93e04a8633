"""A default deployment reaches an anti-NXP2 result recognisable only by its name, against a real FHIR R4 engine.

No ``[mappings.local_codes]``: the laboratory reports anti-NXP2 under its own unmapped code
(``urn:oid:2.16.840.1.113883.3.9999.1|NXP2-LOC``) with the text "抗NXP2抗体", category laboratory and the value
"阳性(+)". The discovery document then carries a ``laboratory`` prefetch template (``category=laboratory``), so both
an EHR that runs the templates and the service's own fallback obtain the result and give the risk cards. Once a site
maps its local code, the code-filtered template finds the result and the ``laboratory`` template is gone.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from cds_service.contracts import EXTENSION_KEY
from tests.builders import (
    LOCAL,
    assert_valid_cds,
    birth_date_for_age,
    condition,
    obs,
    patient,
    qty,
    server_hook_request,
)
from tests.fhir_server.launcher import FhirTestServer
from tests.http_support import SERVICE_URL, AppFactory

PID = "name-only-nxp2-child"
TOKEN = "{{context.patientId}}"
NXP2_CODE = "NXP2-LOC"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
LABORATORY = {"coding": [{"system": CATEGORY_SYSTEM, "code": "laboratory", "display": "Laboratory"}]}
SITE_CODES: dict[str, Any] = {"local_codes": {"anti_nxp2_positive": [f"{LOCAL}|{NXP2_CODE}"]}}
EXPECTED_CARDS = [("refractory", "warning"), ("gi_perforation_death", "warning")]
"""Edema is present (warning on both outcomes); nothing else is recorded."""

Json = dict[str, Any]


def chart() -> list[Json]:
    """The child: anti-NXP2 named only in its text, JDM (M33.00), edema, a birth date (8 years old)."""
    return [
        obs(
            NXP2_CODE,
            system=LOCAL,
            text="抗NXP2抗体",
            pid=PID,
            when="2026-05-02T08:00:00Z",
            category=[LABORATORY],
            valueString="阳性(+)",
        ),
        obs("2276-4", pid=PID, when="2026-11-10T07:30:00Z", category=[LABORATORY], **qty(150, "ng/mL")),
        condition("M33.00", pid=PID),
        condition("R60.0", pid=PID, recordedDate="2026-11-01"),
    ]


def load(base: str) -> None:
    """Store the chart as one transaction: the Patient by PUT (its id kept), everything else by POST."""
    entries: list[Json] = [
        {
            "resource": patient(pid=PID, birth=birth_date_for_age(8)),
            "request": {"method": "PUT", "url": f"Patient/{PID}"},
        }
    ]
    for resource in chart():
        body = {k: v for k, v in resource.items() if k != "id"}
        entries.append({"resource": body, "request": {"method": "POST", "url": resource["resourceType"]}})
    response = requests.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, timeout=10)
    response.raise_for_status()


def discovered_templates(client: FlaskClient) -> dict[str, str]:
    """The prefetch templates as the EHR reads them: from GET /cds-services."""
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    service = next(s for s in services if SERVICE_URL.endswith(s["id"]))
    templates: dict[str, str] = service["prefetch"]
    return templates


def fhir_get(base: str, query: str) -> Json:
    response = requests.get(f"{base}/{query}", headers={"Accept": "application/fhir+json"}, timeout=10)
    response.raise_for_status()
    document: Json = response.json()
    return document


def prefetch_like_an_ehr(client: FlaskClient, base: str) -> Json:
    """What a CDS client does: render each discovered template for the patient and GET it from its FHIR server."""
    return {key: fhir_get(base, template.replace(TOKEN, PID)) for key, template in discovered_templates(client).items()}


def hook(base: str, prefetch: Json | None) -> Json:
    return server_hook_request(
        base, prefetch, pid=PID, hook_instance="7d0c4b1e-2f3a-4e5b-9c6d-8e7f6a5b4c3d", user="Practitioner/rheum-1"
    )


def cards_of(client: FlaskClient, document: Json) -> list[Json]:
    response = client.post(SERVICE_URL, json=document)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: Json = response.get_json()
    assert_valid_cds("serviceResponse", body)
    cards: list[Json] = body["cards"]
    return cards


def tiers(cards: list[Json]) -> list[tuple[str, str]]:
    return [(c["extension"][EXTENSION_KEY]["outcome"], c["extension"][EXTENSION_KEY]["tier"]) for c in cards]


def anti_nxp2(cards: list[Json]) -> Json:
    """The anti-NXP2 predictor as the first card's extension reports it."""
    predictors = cards[0]["extension"][EXTENSION_KEY]["predictors"]
    found: Json = next(p for p in predictors if p["id"] == "anti_nxp2_positive")
    return found


def entries(bundle: Json) -> list[Json]:
    return [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture
def default_app(make_app: AppFactory, fhir_base: str) -> Flask:
    """The service with no local codes, allowed to reach the test FHIR server over http."""
    return make_app(fhir={"allowed_servers": [fhir_base], "allow_http": True})


@pytest.fixture
def mapped_app(make_app: AppFactory, fhir_base: str) -> Flask:
    """The service of a site that has mapped its anti-NXP2 local code."""
    return make_app(fhir={"allowed_servers": [fhir_base], "allow_http": True}, mappings=SITE_CODES)


def test_discovery_has_a_laboratory_template_by_category(default_app: Flask) -> None:
    """Without a local code for anti-NXP2, discovery advertises the patient's laboratory results by category."""
    templates = discovered_templates(default_app.test_client())
    assert templates["laboratory"] == f"Observation?patient={TOKEN}&category=laboratory"
    assert NXP2_CODE not in templates["observations"]


def test_code_filtered_search_alone_misses_the_name_only_result(
    default_app: Flask, fhir_server: FhirTestServer, fhir_base: str
) -> None:
    """The code-filtered observations template does not return the name-only result; the laboratory one does."""
    load(fhir_base)
    templates = discovered_templates(default_app.test_client())
    by_code = entries(fhir_get(fhir_base, templates["observations"].replace(TOKEN, PID)))
    by_category = entries(fhir_get(fhir_base, templates["laboratory"].replace(TOKEN, PID)))
    assert [r["code"].get("text") for r in by_code] == [None]  # only the LOINC-coded ferritin
    assert "抗NXP2抗体" in [r["code"].get("text") for r in by_category]


def test_ehr_running_the_discovery_templates_gets_the_risk_cards(
    default_app: Flask, fhir_server: FhirTestServer, fhir_base: str
) -> None:
    """An EHR that renders and runs every discovered template and sends the results as prefetch gets the risk
    cards: the name-only anti-NXP2 result is read as present."""
    load(fhir_base)
    client = default_app.test_client()
    prefetch = prefetch_like_an_ehr(client, fhir_base)
    assert set(prefetch) == {"patient", "observations", "conditions", "laboratory"}
    before = fhir_server.stats()["requests"]
    cards = cards_of(client, hook(fhir_base, prefetch))
    assert fhir_server.stats()["requests"] == before  # everything came in the prefetch
    assert tiers(cards) == EXPECTED_CARDS
    finding = anti_nxp2(cards)
    assert (finding["state"], finding["value"]) == ("present", "阳性(+)")
    assert "anti-NXP2 阳性(+) (May 2, 2026" in cards[0]["detail"].replace("\\", "")


def test_service_fallback_fetches_the_same_risk_cards(
    default_app: Flask, fhir_server: FhirTestServer, fhir_base: str
) -> None:
    """With no prefetch but a fhirServer, the service runs the same templates itself and gives the same cards."""
    load(fhir_base)
    client = default_app.test_client()
    by_prefetch = cards_of(client, hook(fhir_base, prefetch_like_an_ehr(client, fhir_base)))
    before = fhir_server.stats()
    by_fallback = cards_of(client, hook(fhir_base, None))
    after = fhir_server.stats()
    assert after["requests"] > before["requests"]  # the service did fetch
    assert tiers(by_fallback) == EXPECTED_CARDS
    assert anti_nxp2(by_fallback)["state"] == "present"
    assert [c["summary"] for c in by_fallback] == [c["summary"] for c in by_prefetch]


def test_with_the_local_code_mapped_the_laboratory_template_is_gone(mapped_app: Flask) -> None:
    """Once the site maps its anti-NXP2 code, the observations template carries it and no laboratory template is
    advertised."""
    templates = discovered_templates(mapped_app.test_client())
    assert "laboratory" not in templates
    assert f"{LOCAL}|{NXP2_CODE}" in templates["observations"]


def test_with_the_local_code_mapped_the_coded_result_gives_the_cards(
    mapped_app: Flask, fhir_server: FhirTestServer, fhir_base: str
) -> None:
    """With the local code mapped, the coded result reaches the service through prefetch and through the fallback,
    and gives the same risk cards."""
    load(fhir_base)
    client = mapped_app.test_client()
    prefetch = prefetch_like_an_ehr(client, fhir_base)
    assert set(prefetch) == {"patient", "observations", "conditions"}
    assert "抗NXP2抗体" in [r["code"].get("text") for r in entries(prefetch["observations"])]
    by_prefetch = cards_of(client, hook(fhir_base, prefetch))
    by_fallback = cards_of(client, hook(fhir_base, None))
    assert tiers(by_prefetch) == tiers(by_fallback) == EXPECTED_CARDS
    assert anti_nxp2(by_prefetch)["state"] == anti_nxp2(by_fallback)["state"] == "present"
