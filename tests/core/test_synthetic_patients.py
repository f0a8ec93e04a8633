"""Synthetic patients through the whole pure core: findings, tiers, cards (see tests/synthetic_patients.py)."""

from __future__ import annotations

import pytest

from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from cds_service.core.risk import Assessment
from fhir_mappings import PatientFindings
from tests.builders import assert_valid_cds
from tests.engines import shared_engine
from tests.synthetic_patients import CASES, Case

IDS = [case.name for case in CASES]


def engine_for(case: Case) -> Engine:
    return shared_engine(case.local_codes)


def assess(case: Case) -> Assessment:
    return engine_for(case).assess(case.resources, patient_id=case.patient_id, at=case.at)


def all_findings(case: Case) -> PatientFindings:
    """Every predictor evaluated (the engine stops early when no card is possible)."""
    engine = engine_for(case)
    return engine.reader.read(case.resources, patient_id=case.patient_id, at=case.at).findings()


def cards(case: Case) -> list[dict[str, object]]:
    context = CardContext(hook_instance="5b8c1e9a-6a51-4a5e-9d2e-0c1f2a3b4c5d", patient_id=case.patient_id)
    return engine_for(case).cards(assess(case), context)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_predictor_states(case: Case) -> None:
    """Every one of the twelve predictors has the expected state."""
    findings = all_findings(case)
    actual = {pid: finding.state.value for pid, finding in findings.predictors.items()}
    assert actual == case.expected_states


@pytest.mark.parametrize("case", [c for c in CASES if c.values], ids=[c.name for c in CASES if c.values])
def test_predictor_values(case: Case) -> None:
    """The deciding value of a predictor is the expected one, normalised to the threshold's unit."""
    findings = all_findings(case)
    for pid, expected in case.values.items():
        value = findings.predictors[pid].value
        if isinstance(expected, float):
            assert value == pytest.approx(expected, rel=1e-3), pid
        else:
            assert value == expected, pid


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eligibility_and_tiers(case: Case) -> None:
    """Eligibility, screening and the tier of each outcome are the expected ones."""
    assessment = assess(case)
    tiers = {o.outcome_id: o.tier for o in assessment.outcomes}
    expected_tiers = {"refractory": case.refractory, "gi_perforation_death": case.gi} if case.eligible else {}
    assert (assessment.eligible, assessment.screening, tiers) == (case.eligible, case.screening, expected_tiers)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cards_validate_against_the_cds_hooks_schema(case: Case) -> None:
    """The response built from the cards validates against serviceResponse, with the expected card count."""
    produced = cards(case)
    assert_valid_cds("serviceResponse", {"cards": produced})
    assert len(produced) == case.expected_card_count


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_resource_is_accounted_for(case: Case) -> None:
    """Each resource is either used or skipped with a reason: seen = used + skipped + malformed."""
    findings = all_findings(case)
    assert findings.resources_seen == findings.resources_used + sum(findings.skipped.values()) + findings.malformed


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if not (c.eligible or c.screening or c.notice)],
    ids=[c.name for c in CASES if not (c.eligible or c.screening or c.notice)],
)
def test_no_card_possible_stops_after_the_eligibility_predictors(case: Case) -> None:
    """When neither the risk cards nor the screening card can apply, only the eligibility predictors are evaluated."""
    findings = assess(case).findings
    assert set(findings.predictors) == set(engine_for(case).gate)
