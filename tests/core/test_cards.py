"""Cards: CDS Hooks shape, wording limits, suggestions, escaping, and the assessment extension."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_service.contracts import EXTENSION_KEY, PREDICTOR_IDS
from cds_service.core.cards import CardContext, fit_summary
from cds_service.core.engine import Engine
from tests.builders import AT, PID, SCT, assert_valid_cds, condition, obs, patient, qty
from tests.synthetic_patients import nxp2_positive

HOOK = "0b5e3c9e-3f6f-4b8a-9a34-1d1f1e0c7a55"


def render(engine: Engine, resources: list[dict[str, Any]], **context: Any) -> list[dict[str, Any]]:
    assessment = engine.assess(resources, patient_id=PID, at=AT)
    return engine.cards(assessment, CardContext(hook_instance=HOOK, patient_id=PID, **context))


def by_outcome(cards: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {c["extension"][EXTENSION_KEY]["outcome"]: c for c in cards}


@pytest.fixture(scope="module")
def fatal(engine: Engine) -> list[dict[str, Any]]:
    """Cards of a child with the paper's fatal pattern and missing labs."""
    return render(
        engine,
        [
            patient(),
            nxp2_positive(),
            condition("M33.00"),
            condition("R60.0"),
            condition("L98.499"),
            condition("R13.10"),
            obs("39156-5", **qty(13.0, "kg/m2")),
        ],
        user_id="Practitioner/prac-9",
    )


def test_summary_names_outcome_tier_and_present_predictors(fatal: list[dict[str, Any]]) -> None:
    """The GI card's summary names the outcome at its tier, each present predictor, and what to do next."""
    summary = by_outcome(fatal)["gi_perforation_death"]["summary"]
    assert summary == (
        "High GI perforation/death risk: BMI < 15, edema, skin ulcer, dysphagia/hoarseness — order ANA; review BMI"
    )


def test_indicator_is_the_tier(fatal: list[dict[str, Any]]) -> None:
    """Each card's indicator is its outcome's tier."""
    assert {k: c["indicator"] for k, c in by_outcome(fatal).items()} == {
        "refractory": "warning",
        "gi_perforation_death": "critical",
    }


def test_uuids_are_deterministic_per_hook_instance(engine: Engine, fatal: list[dict[str, Any]]) -> None:
    """The same hook instance gives the same card uuids; another instance gives others."""
    again = render(engine, [patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")])
    other = engine.cards(
        engine.assess([patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")], patient_id=PID, at=AT),
        CardContext(hook_instance="another-instance", patient_id=PID),
    )
    assert [c["uuid"] for c in again] == [c["uuid"] for c in fatal]
    assert not {c["uuid"] for c in other} & {c["uuid"] for c in fatal}


def test_missing_tests_become_suggestions_with_draft_service_requests(fatal: list[dict[str, Any]]) -> None:
    """Each driver not assessed becomes a suggestion creating a valid draft R4 ServiceRequest coded with LOINC."""
    card = by_outcome(fatal)["gi_perforation_death"]
    (suggestion,) = card["suggestions"]
    resource = suggestion["actions"][0]["resource"]
    request = ServiceRequest.model_validate(resource)
    assert (card["selectionBehavior"], suggestion["actions"][0]["type"], request.status, request.intent) == (
        "any",
        "create",
        "draft",
        "proposal",
    )
    assert (resource["code"]["coding"][0]["code"], resource["subject"], resource["requester"]) == (
        "5048-4",
        {"reference": f"Patient/{PID}"},
        {"reference": "Practitioner/prac-9"},
    )


def test_override_reasons_have_displays(fatal: list[dict[str, Any]]) -> None:
    """Every override reason is a Coding with a display."""
    reasons = [r for c in fatal for r in c["overrideReasons"]]
    assert reasons
    assert all(r["display"] and r["code"] and r["system"] for r in reasons)


def test_extension_lists_every_predictor(fatal: list[dict[str, Any]]) -> None:
    """Every card's assessment extension lists all twelve predictors with state, value, unit, date and sources."""
    for card in fatal:
        predictors = card["extension"][EXTENSION_KEY]["predictors"]
        assert [p["id"] for p in predictors] == list(PREDICTOR_IDS)
        assert all({"state", "value", "unit", "effective", "sources"} <= set(p) for p in predictors)


def test_extension_marks_the_cards_drivers(fatal: list[dict[str, Any]]) -> None:
    """drivesTier is true exactly for the outcome's tier-driving predictors."""
    extension = by_outcome(fatal)["refractory"]["extension"][EXTENSION_KEY]
    driving = [p["id"] for p in extension["predictors"] if p["drivesTier"]]
    assert (
        driving
        == extension["drivers"]
        == [
            "muscle_strength_le_3",
            "edema",
            "skin_ulcer",
            "bulbar_weakness",
            "cd4_cd8_lt_1_4",
            "ferritin_gt_200",
        ]
    )


def test_detail_quotes_the_evidence_and_the_caveat(fatal: list[dict[str, Any]]) -> None:
    """The detail has the predictor table with the cohort's rates, OR and P as published, and one line of caveat;
    the counts, confidence intervals and method are on the evidence page."""
    detail = by_outcome(fatal)["gi_perforation_death"]["detail"]
    assert "| edema | **present** · active condition" in detail
    assert "| 50% vs 0% | 17.062 (0.0055¹) |" in detail
    assert "a prompt for review, not a validated score" in detail


def test_detail_says_dysphagia_death_p_is_one_sided(fatal: list[dict[str, Any]]) -> None:
    """The GI card footnotes that dysphagia's P is one-sided and 0.091 two-sided."""
    detail = by_outcome(fatal)["gi_perforation_death"]["detail"]
    assert "| dysphagia/hoarseness | **present** · active condition" in detail
    assert "6.439 (0.0457³)" in detail
    assert "³ one-sided P; two-sided P = 0.0913." in detail


def test_detail_lists_what_was_not_assessed(fatal: list[dict[str, Any]]) -> None:
    """Predictors that could not be assessed are listed as such, never as absent: labs with their reason, an
    examination nobody recorded as one to do at this visit."""
    detail = by_outcome(fatal)["refractory"]["detail"]
    assert "| CD4/CD8 < 1.4 | no result on record |" in detail
    assert "**Examine at this visit:** muscle strength" in detail


def test_values_from_the_record_are_escaped(engine: Engine) -> None:
    """Text from the patient's record cannot inject markdown, links or HTML into the card."""
    evil = "Positive](javascript:alert(1)) <img src=x onerror=alert(1)> | injected |"
    cards = render(
        engine,
        [
            patient(),
            nxp2_positive(),
            condition("M33.00"),
            obs(
                "8061-4",
                valueString=evil,
                interpretation=[
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                "code": "POS",
                            }
                        ]
                    }
                ],
            ),
        ],
    )
    detail = by_outcome(cards)["gi_perforation_death"]["detail"]
    assert "<img" not in detail
    assert "](javascript" not in detail
    assert "| injected |" not in detail
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in detail


def test_screening_card_suggests_the_anti_nxp2_test(engine: Engine) -> None:
    """A child with JDM and unknown anti-NXP2 status gets one info card suggesting the antibody test."""
    (card,) = render(engine, [patient(), condition("M33.00")])
    assert (card["indicator"], card["extension"][EXTENSION_KEY]["cardType"], len(card["suggestions"])) == (
        "info",
        "screening",
        1,
    )
    assert "anti-NXP2" in card["suggestions"][0]["actions"][0]["resource"]["code"]["text"]


def test_evidence_link_when_the_page_url_is_known(engine: Engine) -> None:
    """With an evidence URL every risk card links to its outcome's section of the page, as an absolute link."""
    cards = render(
        engine, [patient(), nxp2_positive(), condition("M33.00")], evidence_url="https://cds.example.org/evidence"
    )
    label = "Evidence: Wang et al. 2020 · anti-NXP2 JDM cohort (n = 26)"
    assert [c["links"] for c in cards] == [
        [
            {
                "label": label,
                "url": "https://cds.example.org/evidence#refractory",
                "type": "absolute",
                "autolaunchable": False,
                "autoLaunchable": False,
            }
        ],
        [
            {
                "label": label,
                "url": "https://cds.example.org/evidence#gi_perforation_death",
                "type": "absolute",
                "autolaunchable": False,
                "autoLaunchable": False,
            }
        ],
    ]


def test_screening_card_links_to_the_whole_page(engine: Engine) -> None:
    """The screening card links to the evidence page itself."""
    (card,) = render(engine, [patient(), condition("M33.00")], evidence_url="https://cds.example.org/evidence")
    assert [link["url"] for link in card["links"]] == ["https://cds.example.org/evidence"]


def test_cards_validate_against_the_schema(fatal: list[dict[str, Any]]) -> None:
    """The cards form a valid CDS Hooks serviceResponse."""
    assert_valid_cds("serviceResponse", {"cards": fatal})


@pytest.mark.parametrize("count", [1, 3, 6, 12])
def test_summary_fits_under_140_characters(count: int) -> None:
    """However many predictors are present, the summary stays under 140 characters and names the first ones."""
    names = [f"a rather long predictor name {i}" for i in range(count)]
    text = fit_summary("Refractory JDM risk (warning): {present}", {"present": names}, {})
    assert len(text) < 140
    assert text.startswith("Refractory JDM risk (warning): a rather long predictor name 0")


def test_summary_reports_how_many_were_left_out() -> None:
    """A shortened list ends with '+N more'."""
    text = fit_summary("X: {present}", {"present": ["p" * 40] * 5}, {})
    assert text == "X: " + ", ".join(["p" * 40] * 3) + " +2 more"


def test_ulcer_recorded_as_snomed_finding_in_detail(engine: Engine) -> None:
    """A finding recorded by an Observation is shown as an examination finding with its date."""
    cards = render(
        engine,
        [
            patient(),
            nxp2_positive(),
            condition("M33.00"),
            obs("46742003", system=SCT, when="2026-11-20", valueBoolean=True),
        ],
    )
    assert "**present** · examination finding (Nov 20, 2026)" in by_outcome(cards)["refractory"]["detail"]
