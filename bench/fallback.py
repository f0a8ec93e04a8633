"""Fallback: no prefetch, the data comes from a FHIR server that adds 50 ms to every request; the hook's total
latency beside one round trip to that server (the same batch request, sent directly)."""

from __future__ import annotations

from typing import Any

import requests

from bench import workload
from bench.apps import service_app
from bench.stats import interleaved, summary_ms
from tests.fhir_server.launcher import FhirTestServer, node_available

DELAY_MS = 50


def _load(base: str) -> None:
    entries = []
    for resource in workload.chart(100):
        body = dict(resource)
        if body["resourceType"] == "Patient":
            entries.append({"resource": body, "request": {"method": "PUT", "url": f"Patient/{body['id']}"}})
        else:
            body.pop("id")
            entries.append({"resource": body, "request": {"method": "POST", "url": body["resourceType"]}})
    response = requests.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}, timeout=60)
    response.raise_for_status()


def run(quick: bool = False) -> dict[str, Any]:
    reason = node_available()
    if reason is not None:
        return {"skipped": f"FHIR test server unavailable: {reason} (run scripts/install-fhir-test-server)"}
    with FhirTestServer(delay_ms=DELAY_MS) as fhir:
        _load(fhir.url)
        app = service_app(
            log_level="INFO",
            fhir={"allowed_servers": [fhir.url], "allow_http": True},
            # the site maps its anti-NXP2 code, so the fallback fetches it like everything else
            mappings={"local_codes": {"anti_nxp2_positive": [f"{workload.LOCAL}|MYO-NXP2"]}},
        )
        client = app.test_client()
        templates = app.extensions["nxp2_cds"].templates
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": t.replace("{{context.patientId}}", workload.PID)}}
                for t in templates.values()
            ],
        }
        request = workload.request(100, prefetch=False) | {"fhirServer": fhir.url}
        session = requests.Session()

        def hook() -> None:
            response = client.post("/cds-services/nxp2-jdm-risk", json=request)
            assert response.status_code == 200, response.get_data(as_text=True)

        def round_trip() -> None:
            session.post(fhir.url, json=batch, headers={"Content-Type": "application/fhir+json"}, timeout=10)

        hook()
        round_trip()
        before = fhir.stats()["requests"]
        samples = interleaved({"hook": hook, "one_round_trip": round_trip}, 8 if quick else 25)
        per_call = (fhir.stats()["requests"] - before - len(samples["one_round_trip"])) / len(samples["hook"])
    entry: dict[str, Any] = {name: summary_ms(values) for name, values in samples.items()}
    entry["fhir_delay_ms"] = DELAY_MS
    entry["fhir_requests_per_hook_call"] = per_call
    entry["hook_vs_one_round_trip"] = round(entry["hook"]["p50_ms"] / entry["one_round_trip"]["p50_ms"], 3)
    return entry
