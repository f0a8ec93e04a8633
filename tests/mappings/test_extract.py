"""fhir_mappings.extract_findings: provenance, skip reasons, bases and robustness."""

from __future__ import annotations

from datetime import datetime

import pytest

from cds_service.core.engine import Engine
from fhir_mappings import PatientFindings, State, extract_findings
from tests.builders import AT, PID, SCT, condition, days_ago, obs, patient, qty, searchset


def findings(engine: Engine, *resources: object) -> PatientFindings:
    return extract_findings(list(resources), patient_id=PID, at=AT, terminology=engine.terminology, rules=engine.rules)


def test_provenance_keeps_value_as_recorded_and_normalised(engine: Engine) -> None:
    """A finding's source carries the reference, the date and value as recorded, and the normalised value."""
    ferritin = obs("14723-1", rid="fer-1", when="2026-11-01T07:30:00+02:00", **qty(500, "pmol/L"))
    finding = findings(engine, patient(), ferritin).predictors["ferritin_gt_200"]
    source = finding.sources[0]
    assert (source.reference, source.effective, source.value, source.unit, source.normalised_unit) == (
        "Observation/fer-1",
        "2026-11-01T07:30:00+02:00",
        "500 pmol/L",
        "pmol/L",
        "ng/mL",
    )
    assert source.normalised_value == pytest.approx(222.52, abs=0.01)


def test_computed_bmi_cites_weight_and_height(engine: Engine) -> None:
    """A BMI computed from weight and height cites both, with basis 'computed'."""
    weight = obs("29463-7", rid="w", **qty(20, "kg"))
    height = obs("8302-2", rid="h", **qty(110, "cm"))
    finding = findings(engine, patient(), weight, height).predictors["bmi_lt_15"]
    assert (finding.basis, finding.references, finding.value) == (
        "computed",
        ("Observation/w", "Observation/h"),
        16.5289,
    )


def test_direct_bmi_newer_than_computed_one_wins(engine: Engine) -> None:
    """A reported BMI newer than the weight/height pair decides."""
    weight = obs("29463-7", when=days_ago(40), **qty(12, "kg"))
    height = obs("8302-2", when=days_ago(40), **qty(100, "cm"))
    bmi = obs("39156-5", rid="bmi", when=days_ago(3), **qty(15.5, "kg/m2"))
    finding = findings(engine, patient(), weight, height, bmi).predictors["bmi_lt_15"]
    assert (finding.state, finding.references) == (State.ABSENT, ("Observation/bmi",))


def test_stale_result_is_unknown_and_says_why(engine: Engine) -> None:
    """A result older than the look-back window leaves the predictor unknown with basis 'outside-lookback'."""
    old = obs("2276-4", rid="old", when=days_ago(400), **qty(900, "ng/mL"))
    finding = findings(engine, patient(), old).predictors["ferritin_gt_200"]
    assert (finding.state, finding.basis, finding.references, finding.basis_detail) == (
        State.UNKNOWN,
        "outside-lookback",
        ("Observation/old",),
        {"lookback_days": "180"},
    )


def test_equivocal_result_is_unknown_with_its_source(engine: Engine) -> None:
    """An equivocal antibody result is unknown, cites the result and has basis 'equivocal'."""
    result = obs("8061-4", rid="ana", valueString="borderline")
    finding = findings(engine, patient(), result).predictors["ana_positive"]
    assert (finding.state, finding.basis, finding.references) == (State.UNKNOWN, "equivocal", ("Observation/ana",))


def test_active_condition_wins_over_later_absent_examination(engine: Engine) -> None:
    """An active edema Condition keeps edema present even when a later exam records it absent; the card says so."""
    edema = condition("R60.0", rid="c", onset=days_ago(60))
    exam = obs("267038008", system=SCT, rid="o", when=days_ago(5), valueBoolean=False)
    finding = findings(engine, patient(), edema, exam).predictors["edema"]
    assert (finding.state, finding.basis, finding.references) == (
        State.PRESENT,
        "condition-despite-later-observation",
        ("Condition/c", "Observation/o"),
    )


def test_skip_reasons_are_counted(engine: Engine) -> None:
    """Resources not used are counted by reason."""
    result = findings(
        engine,
        patient(),
        patient(pid="other"),
        obs("2276-4", pid="other", **qty(900, "ng/mL")),
        obs("2276-4", status="preliminary", **qty(900, "ng/mL")),
        obs("2276-4", when=days_ago(-5), **qty(900, "ng/mL")),
        obs("2276-4", when=days_ago(300), **qty(900, "ng/mL")),
        obs("2276-4", when=days_ago(20), **qty(100, "ng/mL")),
        obs("2276-4", when=days_ago(30), **qty(120, "ng/mL")),
        obs("8867-4", **qty(90, "/min")),
        condition("R60.0", clinical="resolved"),
        {"resourceType": "MedicationRequest", "id": "m"},
    )
    assert result.skipped == {
        "future-dated": 1,
        "observation-status-preliminary": 1,
        "other-patient": 2,
        "outside-lookback": 1,
        "superseded": 1,
        "unrelated": 2,
    }


def test_only_resources_that_are_read_are_validated(engine: Engine) -> None:
    """An invalid resource older than the deciding result is never validated: it is 'superseded', not invalid."""
    bad_old = obs("2276-4", when=days_ago(50), valueQuantity={"value": "lots", "unit": "ng/mL"})
    good_new = obs("2276-4", when=days_ago(5), **qty(120, "ng/mL"))
    assert findings(engine, patient(), bad_old, good_new).skipped == {"superseded": 1}


def test_invalid_resource_that_is_read_is_skipped_with_reason(engine: Engine) -> None:
    """An invalid resource that would decide is skipped as invalid R4 and the next one decides."""
    bad_new = obs("2276-4", when=days_ago(5), valueQuantity={"value": "lots", "unit": "ng/mL"})
    result = findings(engine, patient(), bad_new)
    assert (result.predictors["ferritin_gt_200"].state, result.skipped) == (
        State.UNKNOWN,
        {"invalid-r4-observation": 1},
    )


def test_duplicates_across_prefetch_keys_count_once(engine: Engine) -> None:
    """The same resource in two Bundles is used once; the copy is skipped as a duplicate."""
    ferritin = obs("2276-4", rid="f", **qty(300, "ng/mL"))
    result = findings(engine, patient(), searchset(ferritin), searchset(dict(ferritin)))
    assert (result.resources_used, result.skipped) == (2, {"duplicate": 1})


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        17,
        "Observation",
        [],
        {"no": "resourceType"},
        {"resourceType": "Bundle", "entry": "not a list"},
        {"resourceType": "Bundle", "entry": [None, 3, {"resource": "x"}]},
        {"resourceType": "Observation", "code": {"coding": "nope"}, "subject": {"reference": f"Patient/{PID}"}},
        {"resourceType": "Observation", "code": {"coding": [{"system": 1, "code": ["2276-4"]}]}},
        {"resourceType": "Condition", "code": None, "subject": "Patient/x"},
        {"resourceType": "Patient", "id": PID, "birthDate": "not a date"},
    ],
    ids=lambda g: repr(g)[:40],
)
def test_malformed_input_never_raises(engine: Engine, garbage: object) -> None:
    """Anything that is not usable FHIR is counted, never an exception."""
    result = findings(engine, garbage)
    assert result.resources_seen == result.resources_used + sum(result.skipped.values()) + result.malformed


def test_naive_evaluation_time_is_refused(engine: Engine) -> None:
    """The evaluation time must carry a time zone."""
    with pytest.raises(ValueError, match="timezone-aware"):
        extract_findings(
            [], patient_id=PID, at=datetime(2026, 1, 1), terminology=engine.terminology, rules=engine.rules
        )


def test_absolute_and_versioned_subject_references_match(engine: Engine) -> None:
    """Subjects written as absolute URLs or with _history match the patient."""
    a = obs("2276-4", when=days_ago(5), **qty(300, "ng/mL")) | {
        "subject": {"reference": f"https://ehr.example.org/fhir/Patient/{PID}/_history/3"}
    }
    result = findings(engine, patient(), a)
    assert result.predictors["ferritin_gt_200"].state is State.PRESENT


def test_subject_without_reference_is_skipped(engine: Engine) -> None:
    """An Observation whose subject is only an identifier cannot be attributed and is skipped."""
    a = obs("2276-4", **qty(300, "ng/mL")) | {"subject": {"identifier": {"value": "MRN1"}}}
    assert findings(engine, patient(), a).skipped == {"no-subject": 1}


NOT_DONE = [{"url": "http://hospital.example.org/fhir/StructureDefinition/not-performed", "valueBoolean": True}]


def test_a_result_with_a_modifier_extension_is_not_read(engine: Engine) -> None:
    """A ferritin result carrying a modifier extension (its meaning may be "not done", "negated") is skipped as
    ``modifier-extension``, never read as if the extension were not there: the predictor stays unknown."""
    modified = obs("2276-4", rid="fer-m", **qty(900, "ng/mL"), modifierExtension=NOT_DONE)
    result = findings(engine, patient(), modified)
    assert (result.predictors["ferritin_gt_200"].state, result.skipped) == (State.UNKNOWN, {"modifier-extension": 1})


def test_a_component_with_a_modifier_extension_makes_its_result_unread(engine: Engine) -> None:
    """A myositis panel whose anti-NXP2 component carries a modifier extension is skipped whole: the child is not
    called anti-NXP2 positive on it."""
    from tests.builders import LOCAL, coded

    component = {
        "code": {"coding": [{"system": LOCAL, "code": "MYO-NXP2"}], "text": "NXP2 Ab"},
        "valueCodeableConcept": coded(SCT, "10828004", "Positive"),
        "modifierExtension": NOT_DONE,
    }
    panel = obs("MYO-PANEL", system=LOCAL, text="Myositis panel", component=[component])
    result = findings(engine, patient(), panel)
    assert (result.predictors["anti_nxp2_positive"].state, result.skipped) == (
        State.UNKNOWN,
        {"modifier-extension": 1},
    )


def test_a_condition_with_a_modifier_extension_is_not_counted(engine: Engine) -> None:
    """An edema Condition carrying a modifier extension does not make edema present."""
    edema = condition("R60.0", rid="edema-m", modifierExtension=NOT_DONE)
    result = findings(engine, patient(), edema)
    assert (result.predictors["edema"].state is State.PRESENT, result.skipped) == (False, {"modifier-extension": 1})
