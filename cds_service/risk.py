"""Findings + knowledge base → an :class:`Assessment` per outcome. Pure: no I/O, no clock.

Eligibility, tier-driving predictors and tier rules all come from the knowledge base. Unknown is not absent:
a predictor that could not be assessed never lowers a tier, and an outcome with nothing present but something
unknown is still reported (at the tier the rules give it, ``info`` by default) so the missing tests are suggested.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir_mappings import PatientFindings, State

from .knowledge import KnowledgeBase, Outcome, Tier

ELIGIBLE = "eligible"
NOT_POSITIVE = "required-predictor-not-present"
AGE_UNKNOWN = "age-unknown"
AGE_OUT_OF_RANGE = "age-out-of-range"


@dataclass(frozen=True, slots=True)
class OutcomeAssessment:
    outcome_id: str
    tier: Tier | None
    """``None``: every tier-driving predictor is absent, so no card."""
    present: tuple[str, ...]
    unknown: tuple[str, ...]
    absent: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Assessment:
    findings: PatientFindings
    eligible: bool
    eligibility: str
    """Why (not) eligible: ``eligible``, ``required-predictor-not-present``, ``age-unknown``, ``age-out-of-range``."""
    screening: bool
    """Not eligible, but the knowledge base's screening rule applies (JDM, anti-NXP2 status unknown)."""
    outcomes: tuple[OutcomeAssessment, ...]


def tier_for(outcome: Outcome, present: int, unknown: int) -> Tier | None:
    """The first tier rule the counts satisfy, in the knowledge base's order."""
    for rule in outcome.tiers:
        if present >= rule.min_present and unknown >= rule.min_unknown:
            return rule.tier
    return None


def assess_outcome(outcome_id: str, outcome: Outcome, findings: PatientFindings) -> OutcomeAssessment:
    present = tuple(p for p in outcome.drivers if findings.state(p) is State.PRESENT)
    unknown = tuple(p for p in outcome.drivers if findings.state(p) is State.UNKNOWN)
    absent = tuple(p for p in outcome.drivers if findings.state(p) is State.ABSENT)
    return OutcomeAssessment(outcome_id, tier_for(outcome, len(present), len(unknown)), present, unknown, absent)


def assess(findings: PatientFindings, knowledge: KnowledgeBase) -> Assessment:
    rules = knowledge.eligibility
    age = findings.age_years
    age_ok = age is not None and age < rules.max_age_years
    required_present = all(findings.state(p) is State.PRESENT for p in rules.requires_present)
    if required_present and age_ok:
        outcomes = tuple(assess_outcome(oid, o, findings) for oid, o in knowledge.outcomes.items())
        return Assessment(findings, True, ELIGIBLE, False, outcomes)
    reason = (AGE_UNKNOWN if age is None else AGE_OUT_OF_RANGE) if required_present else NOT_POSITIVE
    screening = (
        age_ok
        and bool(rules.screening_requires_present or rules.screening_requires_unknown)
        and all(findings.state(p) is State.PRESENT for p in rules.screening_requires_present)
        and all(findings.state(p) is State.UNKNOWN for p in rules.screening_requires_unknown)
    )
    return Assessment(findings, False, reason, screening, ())
