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

from cds_service.core.knowledge import Eligibility, KnowledgeBase, Outcome, Tier
from fhir_mappings import PatientFindings, State
from fhir_mappings.dates import completed_years, parse_fhir_date

# eligibility reasons (the extension's ``eligibility.reason``)
ELIGIBLE = "eligible"
NOT_POSITIVE = "required-predictor-not-present"
DIAGNOSIS_NOT_RECORDED = "diagnosis-not-recorded"
AGE_UNKNOWN = "age-unknown"
AGE_OUT_OF_RANGE = "age-out-of-range"

# decisions (logs and metrics): what the service did with the chart, and why
DECISION_CARDS = "risk-cards"
DECISION_ALL_ABSENT = "all-predictors-absent"
DECISION_SCREENING = "screening"
DECISION_NOTICE_DIAGNOSIS = "notice-diagnosis-not-recorded"
DECISION_NOTICE_AGE = "notice-age-unknown"
DECISION_NEGATIVE = "anti-nxp2-negative"
DECISION_NOT_ASSESSED = "anti-nxp2-not-assessed-no-diagnosis"
DECISION_AGE_OUT = "age-out-of-range"

AgeBasis = str
"""``onset``, ``diagnosis`` (the diagnosis' recorded date) or ``now``."""


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
    """Why (not) eligible: ``eligible``, ``required-predictor-not-present``, ``diagnosis-not-recorded``,
    ``age-unknown``, ``age-out-of-range``."""
    screening: bool
    """Not eligible, but the knowledge base's screening rule applies (JDM, anti-NXP2 status unknown)."""
    outcomes: tuple[OutcomeAssessment, ...]
    notice: str | None = None
    """Not eligible for a reason the clinician can fix: ``diagnosis-not-recorded`` or ``age-unknown``."""
    age_years: int | None = None
    """The age eligibility used, in completed years."""
    age_basis: AgeBasis | None = None
    decision: str = DECISION_CARDS


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
        return onset_age, "onset"
    birth = findings.birth_date
    if birth is None:
        return None, None
    for key, basis in (("onset", "onset"), ("recorded", "diagnosis")):
        when = parse_fhir_date(detail.get(key))
        if when is not None and birth <= when <= findings.evaluated_at.date():
            return completed_years(birth, when), basis
    if findings.age_years is None:
        return None, None
    return findings.age_years, "now"


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
        decision = DECISION_CARDS if any(o.tier for o in outcomes) else DECISION_ALL_ABSENT
        return Assessment(findings, True, ELIGIBLE, False, outcomes, None, age, age_basis, decision)
    if others_present and not too_old:
        if not diagnosis_ok:
            notice, decision = DIAGNOSIS_NOT_RECORDED, DECISION_NOTICE_DIAGNOSIS
        else:
            notice, decision = AGE_UNKNOWN, DECISION_NOTICE_AGE
        return Assessment(findings, False, notice, False, (), notice, age, age_basis, decision)
    if others_present:
        return Assessment(findings, False, AGE_OUT_OF_RANGE, False, (), None, age, age_basis, DECISION_AGE_OUT)
    screening = (
        not too_old
        and bool(rules.screening_requires_present or rules.screening_requires_unknown)
        and all(findings.state(p) is State.PRESENT for p in rules.screening_requires_present)
        and all(findings.state(p) is State.UNKNOWN for p in rules.screening_requires_unknown)
    )
    if screening:
        decision = DECISION_SCREENING
    elif too_old and diagnosis_ok:
        decision = DECISION_AGE_OUT
    elif any(findings.state(p) is State.ABSENT for p in rules.requires_present if p != rules.diagnosis):
        decision = DECISION_NEGATIVE
    else:
        decision = DECISION_NOT_ASSESSED
    return Assessment(findings, False, NOT_POSITIVE, screening, (), None, age, age_basis, decision)
