"""Small builders for synthetic FHIR R4 JSON, so tests read like the chart they describe."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
"""The evaluation time every synthetic patient is read at (unless a case says otherwise)."""
PID = "pat-1"

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
V3INT = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
LOCAL = "urn:oid:2.16.840.1.113883.3.9999.1"

_ids = itertools.count(1)
Json = dict[str, Any]


def days_ago(days: float, at: datetime = AT) -> str:
    """An ISO date-time ``days`` before the evaluation time."""
    return (at - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def birth_date_for_age(years: int, extra_days: int = 0, at: datetime = AT) -> str:
    """A birth date that makes the patient ``years`` old at ``at`` (plus ``extra_days`` older)."""
    born = at.date().replace(year=at.year - years) - timedelta(days=extra_days)
    return born.isoformat()


def patient(pid: str = PID, birth: str | None = "2019-03-01", **extra: Any) -> Json:
    resource: Json = {"resourceType": "Patient", "id": pid, "name": [{"family": "Synthetic", "given": ["Test"]}]}
    if birth is not None:
        resource["birthDate"] = birth
    resource.update(extra)
    return resource


def obs(
    code: str,
    *,
    system: str = LOINC,
    display: str | None = None,
    text: str | None = None,
    when: str | None = None,
    status: str = "final",
    pid: str = PID,
    rid: str | None = None,
    **fields: Any,
) -> Json:
    """An Observation; ``fields`` are added as is (``valueQuantity=...``, ``interpretation=...``)."""
    coding: Json = {"system": system, "code": code}
    if display:
        coding["display"] = display
    codeable: Json = {"coding": [coding]}
    if text:
        codeable["text"] = text
    resource: Json = {
        "resourceType": "Observation",
        "id": rid or f"obs-{next(_ids)}",
        "status": status,
        "code": codeable,
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when if when is not None else days_ago(10),
    }
    resource.update(fields)
    return resource


def qty(value: float, unit: str, *, code: str | None = None, comparator: str | None = None, ucum: bool = True) -> Json:
    """``valueQuantity`` (UCUM coded unless ``ucum=False``)."""
    quantity: Json = {"value": value, "unit": unit}
    if ucum:
        quantity["system"] = UCUM
        quantity["code"] = code or unit
    if comparator:
        quantity["comparator"] = comparator
    return {"valueQuantity": quantity}


def coded(system: str, code: str, display: str | None = None) -> Json:
    coding: Json = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def interpretation(code: str) -> Json:
    return {"interpretation": [coded(V3INT, code)]}


def condition(
    code: str,
    *,
    system: str = ICD10CM,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    onset: str | None = None,
    pid: str = PID,
    rid: str | None = None,
    **fields: Any,
) -> Json:
    resource: Json = {
        "resourceType": "Condition",
        "id": rid or f"cond-{next(_ids)}",
        "code": coded(system, code),
        "subject": {"reference": f"Patient/{pid}"},
    }
    if clinical is not None:
        resource["clinicalStatus"] = coded(CLINICAL, clinical)
    if verification is not None:
        resource["verificationStatus"] = coded(VERIFICATION, verification)
    if onset is not None:
        resource["onsetDateTime"] = onset
    resource.update(fields)
    return resource


def searchset(*resources: Json) -> Json:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"http://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


def hook_request(resources: list[Json], *, pid: str = PID, hook_instance: str | None = None) -> Json:
    """A patient-view request whose prefetch holds ``resources`` split the way the discovery templates do."""
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    observations = [r for r in resources if r.get("resourceType") == "Observation"]
    conditions = [r for r in resources if r.get("resourceType") == "Condition"]
    return {
        "hook": "patient-view",
        "hookInstance": hook_instance or "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/prac-1", "patientId": pid},
        "prefetch": {
            "patient": patients[0] if patients else None,
            "observations": searchset(*observations),
            "conditions": searchset(*conditions),
            # the template that fetches laboratory results by category (anti-NXP2 is named, not coded): the
            # resources above already hold every result the tests mean to send
            "laboratory": searchset(),
        },
    }


def server_hook_request(
    fhir_server: str, prefetch: Json | None, *, pid: str = PID, hook_instance: str, user: str = "Practitioner/p1"
) -> Json:
    """A patient-view request naming ``fhir_server``, with ``prefetch`` as given (``None``: none, so the service
    fetches everything from the server)."""
    document: Json = {
        "hook": "patient-view",
        "hookInstance": hook_instance,
        "fhirServer": fhir_server,
        "context": {"userId": user, "patientId": pid},
    }
    if prefetch is not None:
        document["prefetch"] = prefetch
    return document


SCHEMA_FILE = Path(__file__).resolve().parents[1] / "cds_service" / "schemas" / "cds-hooks-2.0.1.derived.schema.json"


@cache
def _schema() -> Json:
    loaded: Json = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


def cds_validator(definition: str) -> jsonschema.protocols.Validator:
    """A validator for one ``$defs`` entry of the derived CDS Hooks 2.0.1 schema."""
    schema = {"$ref": f"#/$defs/{definition}", **{k: v for k, v in _schema().items() if k in ("$schema", "$defs")}}
    validator_class = jsonschema.validators.validator_for(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def assert_valid_cds(definition: str, document: Json) -> None:
    """The document validates against ``$defs/<definition>`` and every card summary is under 140 characters."""
    errors = sorted(cds_validator(definition).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    for card in document.get("cards", []):
        assert len(card["summary"]) < 140, card["summary"]


HEALTHCHAIN_MODELS = "healthchain.models.responses.cdsresponse"


def healthchain_missing() -> str | None:
    """Why HealthChain's CDS Hooks models cannot be imported here, or None when they can."""
    import importlib

    try:
        importlib.import_module(HEALTHCHAIN_MODELS)
    except ImportError as exc:
        return f"HealthChain is not installed ({exc})"
    return None


def assert_valid_healthchain(response_json: Json) -> None:
    """The hook response parses as HealthChain's ``CDSResponse``: pydantic models of CDS Hooks that others wrote, an
    independent reading of the specification beside the JSON Schema above. HealthChain ignores the fields it does
    not model (``extension``), so this checks the standard ones. Raises ``ImportError`` without HealthChain
    (imported by name: it is an optional test dependency, see tests/web/test_interop.py)."""
    import importlib

    import pydantic

    models = importlib.import_module(HEALTHCHAIN_MODELS)
    try:
        parsed = models.CDSResponse.model_validate(response_json)
    except pydantic.ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        message = f"HealthChain rejects the response ({len(problems)} problems):\n" + "\n".join(problems[:10])
        raise AssertionError(message) from None
    except AttributeError as exc:  # HealthChain 0.16 crashes this way on suggestions without selectionBehavior
        raise AssertionError(f"HealthChain's validator failed on the response: {exc!r}") from exc
    assert len(parsed.cards) == len(response_json.get("cards", []))
