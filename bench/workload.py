"""Realistic patient-view requests for the benchmarks (deterministic).

A chart of ``n`` resources: one Patient, a few Conditions (most unrelated), and Observations that are mostly
unrelated vitals and laboratory results, plus what the service looks for — an anti-NXP2 result, weights and
heights over time, ferritin, CD4/CD8, ANA, and findings.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
LOCAL = "urn:oid:2.16.840.1.113883.3.9999.1"
AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PID = "bench-patient-1"

# (LOINC, display, unit, low, high): vitals and common labs nobody here looks for
UNRELATED = [
    ("8867-4", "Heart rate", "/min", 70, 140),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 85, 125),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 45, 80),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.9),
    ("9279-1", "Respiratory rate", "/min", 16, 32),
    ("59408-5", "Oxygen saturation", "%", 92, 100),
    ("718-7", "Hemoglobin", "g/dL", 9.5, 14),
    ("6690-2", "Leukocytes", "10*3/uL", 3, 15),
    ("777-3", "Platelets", "10*3/uL", 150, 450),
    ("2160-0", "Creatinine", "mg/dL", 0.2, 0.8),
    ("1742-6", "ALT", "U/L", 10, 120),
    ("2157-6", "Creatine kinase", "U/L", 50, 9000),
    ("2345-7", "Glucose", "mg/dL", 70, 140),
    ("2951-2", "Sodium", "mmol/L", 133, 145),
]


def _observation(
    rng: random.Random, index: int, code: str, display: str, when: datetime, **value: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{index}",
        "meta": {"lastUpdated": when.isoformat().replace("+00:00", "Z")},
        "status": rng.choice(["final", "final", "final", "amended"]),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory" if code not in ("8867-4", "8480-6") else "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{PID}"},
        "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
        "issued": (when + timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
        **value,
    }


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": round(value, 2), "unit": unit, "system": UCUM, "code": unit}}


def _condition(index: int, system: str, code: str, display: str, onset: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"cond-{index}",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{PID}"},
        "onsetDateTime": onset.date().isoformat(),
    }


def chart(n: int, *, eligible: bool = True, seed: int = 2026) -> list[dict[str, Any]]:
    """``n`` resources for one child. ``eligible=False``: no JDM and no anti-NXP2 result (most chart opens)."""
    rng = random.Random(seed)
    patient = {
        "resourceType": "Patient",
        "id": PID,
        "birthDate": "2019-03-01",
        "gender": "female",
        "name": [{"family": "Bench", "given": ["Child"]}],
    }
    resources: list[dict[str, Any]] = [patient]
    conditions = [
        (ICD, "J45.909", "Asthma"),
        (ICD, "Z23", "Encounter for immunization"),
        (SCT, "271807003", "Eruption of skin"),
    ]
    if eligible:
        conditions += [
            (ICD, "M33.02", "Juvenile dermatomyositis with myopathy"),
            (SCT, "49563000", "Periorbital edema"),
        ]
        resources.append(
            _observation(
                rng,
                0,
                "X",
                "NXP2 (Nuclear matrix protein-2) Ab",
                AT - timedelta(days=300),
                valueCodeableConcept={"coding": [{"system": SCT, "code": "10828004", "display": "Positive"}]},
            )
            | {
                "code": {
                    "coding": [{"system": LOCAL, "code": "MYO-NXP2"}],
                    "text": "NXP2 (Nuclear matrix protein-2) Ab",
                }
            }
        )
    for i, (system, code, display) in enumerate(conditions):
        if len(resources) < n:
            resources.append(_condition(i, system, code, display, AT - timedelta(days=400 - i * 30)))
    index = 1
    while len(resources) < n:
        when = AT - timedelta(days=rng.uniform(0, 720), hours=rng.uniform(0, 24))
        roll = index % 25
        if roll == 0:
            obs = _observation(rng, index, "29463-7", "Body weight", when, **_quantity(rng.uniform(13, 19), "kg"))
        elif roll == 1:
            obs = _observation(rng, index, "8302-2", "Body height", when, **_quantity(rng.uniform(100, 112), "cm"))
        elif roll == 2:
            obs = _observation(rng, index, "2276-4", "Ferritin", when, **_quantity(rng.uniform(40, 700), "ng/mL"))
        elif roll == 3:
            obs = _observation(rng, index, "54218-3", "CD4/CD8", when, **_quantity(rng.uniform(0.8, 2.5), "{ratio}"))
        elif roll == 4 and index % 100 == 4:
            obs = _observation(rng, index, "5048-4", "ANA titer", when, valueString=rng.choice(["1:40", "1:160"]))
        else:
            code, display, unit, low, high = rng.choice(UNRELATED)
            obs = _observation(rng, index, code, display, when, **_quantity(rng.uniform(low, high), unit))
        resources.append(obs)
        index += 1
    return resources


def request(
    n: int, *, eligible: bool = True, prefetch: bool = True, hook_instance: str | None = None
) -> dict[str, Any]:
    """A patient-view request with the chart split the way the discovery templates do (or no prefetch)."""
    resources = chart(n, eligible=eligible)

    def bundle(kind: str) -> dict[str, Any]:
        entries = [
            {"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
            if r["resourceType"] == kind
        ]
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    document: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": hook_instance or "7f2d1c0e-4b9a-4c1e-9f3a-0d6c5b4a3921",
        "context": {"userId": "Practitioner/bench", "patientId": PID},
    }
    if prefetch:
        document["prefetch"] = {
            "patient": resources[0],
            "observations": bundle("Observation"),
            "conditions": bundle("Condition"),
            # the discovery's "laboratory" template; every Observation of the chart is already in "observations"
            "laboratory": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
        }
    return document


OTHER_RESOURCES = 6
"""Besides its Observations, an eligible chart of more than 6 resources holds the Patient and 5 Conditions."""


def observations_request(n: int) -> dict[str, Any]:
    """A patient-view request whose prefetch holds exactly ``n`` Observations (with the Patient and 5 Conditions):
    the unit the CQL-engine comparison counts in."""
    return request(n + OTHER_RESOURCES)
