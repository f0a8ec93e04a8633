"""Findings + knowledge base → an :class:`Assessment` per outcome. Pure: no I/O, no clock.

Eligibility, tier-driving predictors and tier rules all come from the knowledge base. Unknown is not absent:
a predictor that could not be assessed never lowers a tier, and an outcome with nothing present but something
unknown is still reported (at the tier the rules give it, ``info`` by default) so the missing tests are suggested.

Who the evidence applies to is the cohort's children: a recorded juvenile myositis diagnosis, anti-NXP2 positive,
and age < 18 — at onset (or diagnosis) when the diagnosis Condition says when, else now. Anti-NXP2 positive without
a recorded diagnosis, or without a known age, gets one notice (an info card that says why), never risk tiers.
Every assessment carries a ``decision`` code, so each "no card" has a reason in the logs and metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cds_service.contracts import AgeBasis, Decision, EligibilityReason, Tier
from cds_service.core.knowledge import Eligibility, KnowledgeBase, Outcome
from fhir_mappings import PatientFindings, State
from fhir_mappings.dates import completed_years, parse_fhir_date


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
    eligibility: EligibilityReason
    """Why (not) eligible."""
    screening: bool
    """Not eligible, but the knowledge base's screening rule applies (JDM, anti-NXP2 status unknown)."""
    outcomes: tuple[OutcomeAssessment, ...]
    notice: EligibilityReason | None = None
    """Not eligible for a reason the clinician can fix: ``diagnosis-not-recorded`` or ``age-unknown``."""
    age_years: int | None = None
    """The age eligibility used, in completed years."""
    age_basis: AgeBasis | None = None
    decision: Decision = Decision.RISK_CARDS


def tier_for(outcome: Outcome, present: int, unknown: int, significant_present: int | None = None) -> Tier | None:
    """The first tier rule the counts satisfy, in the knowledge base's order. A rule with ``count =
    "significant"`` counts only ``significant_present`` (the present drivers significant two-sided)."""
    for rule in outcome.tiers:
        counted = present if rule.count == "all" or significant_present is None else significant_present
        if counted >= rule.min_present and unknown >= rule.min_unknown:
            return rule.tier
    return None


def assess_outcome(
    outcome_id: str, outcome: Outcome, findings: PatientFindings, alpha: float = 0.05
) -> OutcomeAssessment:
    present = tuple(p for p in outcome.drivers if findings.state(p) is State.PRESENT)
    unknown = tuple(p for p in outcome.drivers if findings.state(p) is State.UNKNOWN)
    absent = tuple(p for p in outcome.drivers if findings.state(p) is State.ABSENT)
    significant = set(outcome.significant_drivers(alpha))
    tier = tier_for(outcome, len(present), len(unknown), sum(1 for p in present if p in significant))
    return OutcomeAssessment(outcome_id, tier, present, unknown, absent)


def age_for(findings: PatientFindings, rules: Eligibility) -> tuple[int | None, AgeBasis | None]:
    """Age at onset when the diagnosis Condition says when (onset date, or onset age), at diagnosis when it has
    only a recorded date, else age now; ``(None, None)`` when it cannot be known."""
    diagnosis = findings.predictors.get(rules.diagnosis) if rules.diagnosis else None
    detail = diagnosis.basis_detail if diagnosis is not None and diagnosis.state is State.PRESENT else {}
    onset_age = _years(detail.get("onset_age_years"))
    if onset_age is not None:
        return onset_age, AgeBasis.ONSET
    birth = findings.birth_date
    if birth is None:
        return None, None
    for key, basis in (("onset", AgeBasis.ONSET), ("recorded", AgeBasis.DIAGNOSIS)):
        when = parse_fhir_date(detail.get(key))
        if when is not None and birth <= when <= findings.evaluated_at.date():
            return completed_years(birth, when), basis
    if findings.age_years is None:
        return None, None
    return findings.age_years, AgeBasis.NOW


def _years(value: str | None) -> int | None:
    """Completed years from a decimal age as the mapping wrote it (``"7.50"``); ``None`` unless 0 to 150: the
    mapping bounds it already, and an age outside that range (or NaN) must not decide eligibility."""
    try:
        years = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return int(years) if 0 <= years < 150 else None


def assess(findings: PatientFindings, knowledge: KnowledgeBase) -> Assessment:
    rules = knowledge.eligibility
    age, age_basis = age_for(findings, rules)
    age_ok = age is not None and age < rules.max_age_years
    too_old = age is not None and not age_ok
    diagnosis_ok = rules.diagnosis is None or findings.state(rules.diagnosis) is State.PRESENT
    others_present = all(findings.state(p) is State.PRESENT for p in rules.requires_present if p != rules.diagnosis)
    if others_present and diagnosis_ok and age_ok:
        alpha = knowledge.tier_policy.alpha
        outcomes = tuple(assess_outcome(oid, o, findings, alpha) for oid, o in knowledge.outcomes.items())
        decision = Decision.RISK_CARDS if any(o.tier for o in outcomes) else Decision.ALL_PREDICTORS_ABSENT
        return Assessment(findings, True, EligibilityReason.ELIGIBLE, False, outcomes, None, age, age_basis, decision)
    if others_present and not too_old:
        if not diagnosis_ok:
            notice, decision = EligibilityReason.DIAGNOSIS_NOT_RECORDED, Decision.NOTICE_DIAGNOSIS_NOT_RECORDED
        else:
            notice, decision = EligibilityReason.AGE_UNKNOWN, Decision.NOTICE_AGE_UNKNOWN
        return Assessment(findings, False, notice, False, (), notice, age, age_basis, decision)
    if others_present:
        return Assessment(
            findings,
            False,
            EligibilityReason.AGE_OUT_OF_RANGE,
            False,
            (),
            None,
            age,
            age_basis,
            Decision.AGE_OUT_OF_RANGE,
        )
    screening = (
        not too_old
        and bool(rules.screening_requires_present or rules.screening_requires_unknown)
        and all(findings.state(p) is State.PRESENT for p in rules.screening_requires_present)
        and all(findings.state(p) is State.UNKNOWN for p in rules.screening_requires_unknown)
    )
    if screening:
        decision = Decision.SCREENING
    elif too_old and diagnosis_ok:
        decision = Decision.AGE_OUT_OF_RANGE
    elif any(findings.state(p) is State.ABSENT for p in rules.requires_present if p != rules.diagnosis):
        decision = Decision.ANTI_NXP2_NEGATIVE
    else:
        decision = Decision.ANTI_NXP2_NOT_ASSESSED_NO_DIAGNOSIS
    return Assessment(
        findings, False, EligibilityReason.REQUIRED_PREDICTOR_NOT_PRESENT, screening, (), None, age, age_basis, decision
    )
