"""In-process latency of the hook through the app (Flask test client), beside two baselines timed in the same run:
``json.loads`` of the same body (the floor) and a naive handler that validates every resource with fhir.resources.
Also the early exit: a chart with no JDM and no anti-NXP2 data against an eligible one of the same size."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient

from bench import workload
from bench.apps import service_app
from bench.stats import interleaved, summary_ms

SERVICE_URL = "/cds-services/nxp2-jdm-risk"
ROUNDS = {10: 400, 100: 300, 1000: 60, 10000: 8}
NAIVE_EVERY = {10: 1, 100: 2, 1000: 6, 10000: 4}


def naive_handler(engine: Any, body: bytes) -> list[dict[str, Any]]:
    """The obvious approach: parse, validate every resource with fhir.resources, then map and render."""
    document = json.loads(body)
    for value in document["prefetch"].values():
        if value is not None:
            (Bundle if value["resourceType"] == "Bundle" else Patient).model_validate(value)
    from cds_service.core.cards import CardContext

    context = document["context"]
    resources = [v for v in document["prefetch"].values() if v is not None]
    assessment = engine.assess(resources, patient_id=context["patientId"], at=datetime.now(UTC))
    cards: list[dict[str, Any]] = engine.cards(
        assessment, CardContext(hook_instance=document["hookInstance"], patient_id=context["patientId"])
    )
    return cards


def _post(client: Any, body: bytes) -> None:
    response = client.post(SERVICE_URL, data=body, content_type="application/json")
    assert response.status_code == 200


def run(sizes: tuple[int, ...] = (10, 100, 1000, 10000), quick: bool = False) -> dict[str, Any]:
    app = service_app(log_level="INFO")
    client = app.test_client()
    engine = app.extensions["nxp2_cds"].engine
    results: dict[str, Any] = {"sizes": {}}
    for size in sizes:
        body = orjson.dumps(workload.request(size))

        hook = partial(_post, client, body)
        for _ in range(5):
            hook()
        gc.collect()
        rounds = max(3, ROUNDS[size] // (5 if quick else 1))
        functions: dict[str, Callable[[], object]] = {
            "hook": hook,
            "json_loads": partial(json.loads, body),
            "naive": partial(naive_handler, engine, body),
        }
        samples = interleaved(functions, rounds, every={"naive": NAIVE_EVERY[size]})
        entry: dict[str, Any] = {name: summary_ms(values) for name, values in samples.items()}
        entry["body_bytes"] = len(body)
        entry["hook_vs_json_loads"] = round(entry["hook"]["p50_ms"] / entry["json_loads"]["p50_ms"], 2)
        entry["naive_vs_hook"] = round(entry["naive"]["p50_ms"] / entry["hook"]["p50_ms"], 1)
        results["sizes"][str(size)] = entry
    if "1000" in results["sizes"] and "10000" in results["sizes"]:
        results["growth_10000_vs_1000"] = round(
            results["sizes"]["10000"]["hook"]["p50_ms"] / results["sizes"]["1000"]["hook"]["p50_ms"], 2
        )
    results["early_exit"] = early_exit(client, quick)
    return results


def early_exit(client: Any, quick: bool) -> dict[str, Any]:
    """A chart with no JDM and no anti-NXP2 result (most chart opens) against an eligible chart, same size."""
    out: dict[str, Any] = {}
    for size in (100, 1000):
        bodies = {
            "eligible": orjson.dumps(workload.request(size, eligible=True)),
            "not_eligible": orjson.dumps(workload.request(size, eligible=False)),
        }
        calls: dict[str, Callable[[], object]] = {name: partial(_post, client, body) for name, body in bodies.items()}
        for call in calls.values():
            call()
        samples = interleaved(calls, max(3, (200 if size == 100 else 40) // (5 if quick else 1)))
        entry: dict[str, Any] = {name: summary_ms(values) for name, values in samples.items()}
        entry["not_eligible_vs_eligible"] = round(entry["not_eligible"]["p50_ms"] / entry["eligible"]["p50_ms"], 2)
        out[str(size)] = entry
    return out
