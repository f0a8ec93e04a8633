"""Tiers and eligibility from predictor states (risk.assess), independent of FHIR."""

from __future__ import annotations

from datetime import date

import pytest

from cds_service.contracts import PREDICTOR_IDS
from cds_service.core.knowledge import KnowledgeBase
from cds_service.core.risk import assess
from fhir_mappings import PatientFindings, PredictorFinding, State
from tests.builders import AT


def findings(age: int | None = 8, /, **states: str) -> PatientFindings:
    """Findings with every predictor absent unless given, and the child's JDM diagnosis recorded."""
    states = {"jdm_diagnosis": "present", **states}
    predictors = {pid: PredictorFinding(id=pid, state=State(states.get(pid, "absent"))) for pid in PREDICTOR_IDS}
    return PatientFindings(
        patient_id="p", evaluated_at=AT, birth_date=date(2018, 1, 1), age_years=age, predictors=predictors
    )


def tiers(knowledge: KnowledgeBase, **states: str) -> dict[str, str | None]:
    result = assess(findings(8, anti_nxp2_positive="present", **states), knowledge)
    return {o.outcome_id: o.tier for o in result.outcomes}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({}, {"refractory": None, "gi_perforation_death": None}),
        ({"edema": "present"}, {"refractory": "warning", "gi_perforation_death": "warning"}),
        (
            {"edema": "present", "ana_positive": "present"},
            {"refractory": "warning", "gi_perforation_death": "critical"},
        ),
        ({"bmi_lt_15": "present", "ana_positive": "present"}, {"refractory": None, "gi_perforation_death": "critical"}),
        ({"ferritin_gt_200": "unknown"}, {"refractory": "info", "gi_perforation_death": None}),
        (
            {"ana_positive": "unknown", "ferritin_gt_200": "present"},
            {"refractory": "warning", "gi_perforation_death": "info"},
        ),
        ({"ild": "present", "ro52_positive": "present"}, {"refractory": None, "gi_perforation_death": None}),
        ({"muscle_strength_le_3": "present"}, {"refractory": "warning", "gi_perforation_death": None}),
    ],
    ids=["all-absent", "one-shared", "two-gi", "gi-only", "refractory-unknown", "gi-unknown", "non-drivers", "muscle"],
)
def test_tiers(knowledge: KnowledgeBase, states: dict[str, str], expected: dict[str, str | None]) -> None:
    """Critical at two GI predictors, warning at one, info when none present but one unknown, else no card."""
    assert tiers(knowledge, **states) == expected


def test_unknown_never_lowers_a_tier(knowledge: KnowledgeBase) -> None:
    """Unknown predictors beside a present one keep the tier the present one gives."""
    assert tiers(knowledge, edema="present", bmi_lt_15="unknown", ana_positive="unknown")["gi_perforation_death"] == (
        "warning"
    )


@pytest.mark.parametrize(
    ("age", "states", "eligible", "reason", "screening"),
    [
        (8, {"anti_nxp2_positive": "present"}, True, "eligible", False),
        (
            8,
            {"anti_nxp2_positive": "absent", "jdm_diagnosis": "present"},
            False,
            "required-predictor-not-present",
            False,
        ),
        (
            8,
            {"anti_nxp2_positive": "unknown", "jdm_diagnosis": "present"},
            False,
            "required-predictor-not-present",
            True,
        ),
        (
            8,
            {"anti_nxp2_positive": "unknown", "jdm_diagnosis": "unknown"},
            False,
            "required-predictor-not-present",
            False,
        ),
        (18, {"anti_nxp2_positive": "present"}, False, "age-out-of-range", False),
        (None, {"anti_nxp2_positive": "present"}, False, "age-unknown", False),
        (8, {"anti_nxp2_positive": "present", "jdm_diagnosis": "unknown"}, False, "diagnosis-not-recorded", False),
        (
            18,
            {"anti_nxp2_positive": "unknown", "jdm_diagnosis": "present"},
            False,
            "required-predictor-not-present",
            False,
        ),
    ],
    ids=["eligible", "negative", "screening", "no-jdm", "adult", "no-age", "adult-jdm-unknown", "no-diagnosis"],
)
def test_eligibility(
    knowledge: KnowledgeBase, age: int | None, states: dict[str, str], eligible: bool, reason: str, screening: bool
) -> None:
    """Eligible: anti-NXP2 present and age < 18. Screening: JDM, anti-NXP2 unknown, age < 18."""
    result = assess(findings(age, **states), knowledge)
    assert (result.eligible, result.eligibility, result.screening) == (eligible, reason, screening)


def test_tier_rules_come_from_the_knowledge_base(fresh_knowledge: KnowledgeBase) -> None:
    """Changing the tier rules in the knowledge base changes the tier (nothing is hard-coded)."""
    gi = fresh_knowledge.outcomes["gi_perforation_death"]
    stricter = gi.model_copy(update={"tiers": (gi.tiers[0].model_copy(update={"min_present": 3}), *gi.tiers[1:])})
    kb = fresh_knowledge.model_copy(update={"outcomes": {**fresh_knowledge.outcomes, "gi_perforation_death": stricter}})
    result = assess(findings(anti_nxp2_positive="present", edema="present", ana_positive="present"), kb)
    assert {o.outcome_id: o.tier for o in result.outcomes}["gi_perforation_death"] == "warning"
