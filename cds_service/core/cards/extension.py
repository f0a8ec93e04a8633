"""The assessment extension every card carries, built to its typed model (:mod:`cds_service.contracts`)."""

from __future__ import annotations

from collections.abc import Sequence

from cds_service.contracts import (
    EXTENSION_VERSION,
    PREDICTOR_IDS,
    AssessmentExtension,
    CardType,
    PredictorJson,
    Tier,
)
from cds_service.core.cards.facts import Facts
from fhir_mappings import PredictorFinding


def assessment_extension(
    facts: Facts, outcome_id: str | None, tier: Tier, drivers: Sequence[str], card_type: CardType = CardType.RISK
) -> AssessmentExtension:
    """The card's ``extension["nxp2-cds.assessment"]`` (:class:`cds_service.contracts.AssessmentExtension`)."""
    findings = facts.findings
    assessment = facts.assessment
    return {
        "version": EXTENSION_VERSION,
        "cardType": card_type,
        "outcome": outcome_id,
        "tier": tier,
        "knowledgeBase": {
            "id": facts.kb.source.id,
            "version": facts.kb.source.version,
            "language": facts.language,
        },
        "evaluatedAt": findings.evaluated_at.isoformat().replace("+00:00", "Z"),
        "eligibility": {
            "eligible": assessment.eligible,
            "reason": assessment.eligibility,
            "ageYears": findings.age_years,
            "ageAtEligibility": assessment.age_years,
            "ageBasis": assessment.age_basis,
        },
        "drivers": list(drivers),
        "predictors": [predictor_json(facts.finding(p), p in drivers) for p in PREDICTOR_IDS],
        "counts": {
            "resourcesSeen": findings.resources_seen,
            "resourcesUsed": findings.resources_used,
            "skipped": {reason.value: count for reason, count in findings.skipped.items()},
        },
    }


def predictor_json(finding: PredictorFinding, drives: bool) -> PredictorJson:
    return {
        "id": finding.id,
        "state": finding.state,
        "value": finding.value,
        "unit": finding.unit,
        "effective": finding.effective,
        "sources": list(finding.references),
        "basis": finding.basis,
        "drivesTier": drives,
        "provenance": [
            {
                "reference": s.reference,
                "resourceType": s.resource_type,
                "valueSet": s.concept,
                "code": s.code_display,
                "effective": s.effective,
                "value": s.value,
                "unit": s.unit,
                "normalisedValue": s.normalised_value,
                "normalisedUnit": s.normalised_unit,
            }
            for s in finding.sources
        ],
    }
