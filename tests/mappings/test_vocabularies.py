"""The mappings speak closed vocabularies (Basis, SkipReason): what a feed writes is mapped onto them, never echoed."""

from __future__ import annotations

from cds_service.core.engine import Engine
from fhir_mappings import Basis, PatientFindings, SkipReason, extract_findings
from tests.builders import AT, PID, condition, obs, patient, qty


def findings(engine: Engine, *resources: object) -> PatientFindings:
    return extract_findings(list(resources), patient_id=PID, at=AT, terminology=engine.terminology, rules=engine.rules)


def test_an_observation_status_outside_r4_is_counted_as_unrecognised(engine: Engine) -> None:
    """A ferritin whose status is no R4 code ("validated") is skipped as observation-status-unrecognised."""
    found = findings(engine, patient(), obs("2276-4", status="validated", **qty(900, "ng/mL")))
    assert found.skipped == {SkipReason.OBSERVATION_STATUS_UNRECOGNISED: 1}


def test_an_r4_observation_status_keeps_its_own_reason(engine: Engine) -> None:
    """A cancelled ferritin is skipped as observation-status-cancelled."""
    found = findings(engine, patient(), obs("2276-4", status="cancelled", **qty(900, "ng/mL")))
    assert found.skipped == {SkipReason.OBSERVATION_STATUS_CANCELLED: 1}


def test_an_observation_without_a_status_is_counted_as_missing(engine: Engine) -> None:
    """A ferritin with a non-string status is skipped as observation-status-missing."""
    ferritin = {**obs("2276-4", **qty(900, "ng/mL")), "status": 7}
    found = findings(engine, patient(), ferritin)
    assert found.skipped == {SkipReason.OBSERVATION_STATUS_MISSING: 1}


def test_a_condition_clinical_status_outside_r4_is_counted_as_unrecognised(engine: Engine) -> None:
    """An edema Condition whose clinical status is a local code ("chronic") is skipped as
    condition-status-unrecognised, not as "condition-chronic"."""
    found = findings(engine, patient(), condition("R60.9", clinical="chronic"))
    assert found.skipped == {SkipReason.CONDITION_STATUS_UNRECOGNISED: 1}


def test_an_entered_in_error_condition_keeps_its_own_reason(engine: Engine) -> None:
    """An edema Condition entered in error is skipped as condition-entered-in-error."""
    found = findings(engine, patient(), condition("R60.9", verification="entered-in-error"))
    assert found.skipped == {SkipReason.CONDITION_ENTERED_IN_ERROR: 1}


def test_every_basis_is_worded_by_the_shipped_knowledge_base(engine: Engine) -> None:
    """config/knowledge.toml words every Basis member (the cards never show a bare code)."""
    assert set(engine.knowledge.wording.basis) >= {basis.value for basis in Basis}
