"""What the project relies on from the FHIR test server (Medplum's R4 engine behind tests/fhir_server).

These pin the behaviour of the engine and of our adapter, so that the service's FHIR-server fallback
is tested against a FHIR implementation nobody on this project wrote.
"""

from __future__ import annotations

import uuid
from typing import Any

import requests

from tests.fhir_server.launcher import FhirTestServer

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
TIMEOUT = 30


def _observation(patient_ref: str, code: str, when: str, value: float | None = None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": when,
    }
    if value is not None:
        obs["valueQuantity"] = {
            "value": value,
            "unit": "U/L",
            "system": "http://unitsofmeasure.org",
            "code": "U/L",
        }
    return obs


def _condition(patient_ref: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "subject": {"reference": patient_ref},
    }


def _entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def _patient_bundle() -> dict[str, Any]:
    """A transaction: one Patient, four Observations and two Conditions, linked by urn:uuid."""
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry(
                {"resourceType": "Patient", "name": [{"family": "Doe"}], "birthDate": "2014-05-02"},
                patient_urn,
            ),
            _entry(_observation(patient_urn, "2276-4", "2024-01-10", 310)),  # ferritin
            _entry(_observation(patient_urn, "39156-5", "2024-01-10", 17.5)),  # BMI
            _entry(_observation(patient_urn, "2157-6", "2024-02-01", 900)),  # CK: not asked for
            _entry(_observation(patient_urn, "2276-4", "2024-03-05", 150)),  # ferritin again
            _entry(_condition(patient_urn, "396230008")),  # dermatomyositis
            _entry(_condition(patient_urn, "19307009")),
        ],
    }


def _post_transaction(base: str, bundle: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(base, json=bundle, headers=FHIR_JSON, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _store_patient(base: str) -> str:
    """Stores the patient bundle and returns the server-assigned Patient id."""
    result = _post_transaction(base, _patient_bundle())
    location: str = result["entry"][0]["response"]["location"]
    assert location.startswith("Patient/")
    return location.split("/")[1]


def _search(url: str, **params: str) -> dict[str, Any]:
    response = requests.get(url, params=params, headers=FHIR_JSON, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    bundle: dict[str, Any] = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    return bundle


def _codes(bundle: dict[str, Any]) -> list[str]:
    return sorted(e["resource"]["code"]["coding"][0]["code"] for e in bundle.get("entry", []))


def test_metadata_is_an_r4_capability_statement(fhir_base: str) -> None:
    """GET /metadata answers a CapabilityStatement for FHIR 4.0.1 as application/fhir+json."""
    response = requests.get(f"{fhir_base}/metadata", headers=FHIR_JSON, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in body["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Condition"} <= types


def test_transaction_with_urn_uuid_references_is_stored(fhir_base: str) -> None:
    """A transaction Bundle is stored whole and its urn:uuid references point at the new Patient."""
    result = _post_transaction(fhir_base, _patient_bundle())
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201"] * 7
    patient_id = result["entry"][0]["resource"]["id"]
    for entry in result["entry"][1:]:
        assert entry["resource"]["subject"] == {"reference": f"Patient/{patient_id}"}
        assert entry["fullUrl"] == f"{fhir_base}/{entry['resource']['resourceType']}/{entry['resource']['id']}"
    assert _search(f"{fhir_base}/Observation", subject=f"Patient/{patient_id}")["total"] == 4
    assert _search(f"{fhir_base}/Condition", patient=patient_id)["total"] == 2


def test_token_or_search_by_patient_returns_exactly_the_matches_with_full_url(fhir_base: str) -> None:
    """patient=<bare id> & code=system|a,system|b returns exactly those Observations, each with fullUrl."""
    patient_id = _store_patient(fhir_base)
    other_patient = _store_patient(fhir_base)  # same codes, must not leak in
    bundle = _search(f"{fhir_base}/Observation", patient=patient_id, code=f"{LOINC}|2276-4,{LOINC}|39156-5")
    assert bundle["total"] == 3
    assert _codes(bundle) == ["2276-4", "2276-4", "39156-5"]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert resource["subject"]["reference"] == f"Patient/{patient_id}" != f"Patient/{other_patient}"
        assert entry["fullUrl"] == f"{fhir_base}/Observation/{resource['id']}"
        assert entry["search"]["mode"] == "match"


def test_patient_reference_matches_in_both_forms(fhir_base: str) -> None:
    """A reference search parameter matches `<id>` and `Patient/<id>` alike."""
    patient_id = _store_patient(fhir_base)
    bare = _search(f"{fhir_base}/Observation", patient=patient_id)
    typed = _search(f"{fhir_base}/Observation", patient=f"Patient/{patient_id}")
    assert bare["total"] == typed["total"] == 4


def test_date_search_with_prefix(fhir_base: str) -> None:
    """date=ge<day> keeps only the Observations on or after that day."""
    patient_id = _store_patient(fhir_base)
    bundle = _search(f"{fhir_base}/Observation", patient=patient_id, date="ge2024-02-01")
    assert _codes(bundle) == ["2157-6", "2276-4"]


def test_post_search_accepts_form_parameters(fhir_base: str) -> None:
    """POST <type>/_search with a form body searches like GET."""
    patient_id = _store_patient(fhir_base)
    response = requests.post(
        f"{fhir_base}/Observation/_search",
        data={"patient": patient_id, "code": f"{LOINC}|39156-5"},
        headers={"Accept": "application/fhir+json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert _codes(response.json()) == ["39156-5"]


def test_read_patient_by_id(fhir_base: str) -> None:
    """GET Patient/<id> returns the stored Patient with its id and version."""
    patient_id = _store_patient(fhir_base)
    response = requests.get(f"{fhir_base}/Patient/{patient_id}", headers=FHIR_JSON, timeout=TIMEOUT)
    assert response.status_code == 200
    patient = response.json()
    assert patient["resourceType"] == "Patient"
    assert patient["id"] == patient_id
    assert patient["birthDate"] == "2014-05-02"
    assert response.headers["ETag"] == f'W/"{patient["meta"]["versionId"]}"'


def test_read_of_unknown_id_is_404_operation_outcome(fhir_base: str) -> None:
    """Reading an id that does not exist answers 404 with an OperationOutcome."""
    response = requests.get(f"{fhir_base}/Patient/does-not-exist", headers=FHIR_JSON, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_batch_of_gets_is_one_round_trip(fhir_base: str, fhir_server: FhirTestServer) -> None:
    """A batch Bundle of GETs answers one entry per request, in order, for one counted request."""
    patient_id = _store_patient(fhir_base)
    before = fhir_server.stats()["requests"]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={patient_id}&code={LOINC}|2276-4"}},
            {"request": {"method": "GET", "url": f"Condition?patient={patient_id}"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    response = requests.post(fhir_base, json=batch, headers=FHIR_JSON, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert fhir_server.stats()["requests"] == before + 1
    result = response.json()
    assert result["type"] == "batch-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["200", "200", "200", "404"]
    assert result["entry"][0]["resource"]["id"] == patient_id
    observations = result["entry"][1]["resource"]
    assert _codes(observations) == ["2276-4", "2276-4"]
    assert all(e["fullUrl"].startswith(f"{fhir_base}/Observation/") for e in observations["entry"])
    assert result["entry"][2]["resource"]["total"] == 2
    assert result["entry"][3]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_paging_with_count_follows_next_links(fhir_base: str) -> None:
    """_count limits a page; the `next` links (via _offset) walk every match exactly once."""
    patient_id = _store_patient(fhir_base)
    page = _search(f"{fhir_base}/Observation", patient=patient_id, _count="3")
    assert page["total"] == 4
    seen = [e["resource"]["id"] for e in page["entry"]]
    assert len(seen) == 3
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert "self" in links
    nxt = requests.get(links["next"], headers=FHIR_JSON, timeout=TIMEOUT).json()
    seen += [e["resource"]["id"] for e in nxt["entry"]]
    assert len(seen) == len(set(seen)) == 4
    assert "next" not in {link["relation"] for link in nxt["link"]}


def test_stats_count_requests_and_reset_clears_store_and_counter(fhir_server: FhirTestServer) -> None:
    """/__admin/stats counts FHIR requests; /__admin/reset zeroes it and empties the store."""
    fhir_server.reset()
    assert fhir_server.stats()["requests"] == 0
    patient_id = _store_patient(fhir_server.url)
    requests.get(f"{fhir_server.url}/Patient/{patient_id}", timeout=TIMEOUT)
    stats = fhir_server.stats()
    assert stats["requests"] == 2
    assert stats["recent"] == ["POST /fhir", f"GET /fhir/Patient/{patient_id}"]
    fhir_server.reset()
    assert fhir_server.stats()["requests"] == 0
    assert requests.get(f"{fhir_server.url}/Patient/{patient_id}", timeout=TIMEOUT).status_code == 404
