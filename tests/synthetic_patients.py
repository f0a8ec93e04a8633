"""Synthetic patients: each a small chart and what the service must conclude from it.

Every case states all twelve predictor states (defaults: nothing recorded — everything unknown: a finding nobody
recorded either way is "not recorded", never absent) and the tier of both outcomes. Unless a case says
``jdm=False``, its chart also records the child's juvenile dermatomyositis (a confirmed, active M33.00 Condition),
since the risk cards need a recorded myositis diagnosis. Together they cover every predictor, unit, coding variant,
status rule, look-back edge and eligibility branch of ``fhir_mappings`` and ``risk``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.builders import (
    AT,
    ICD10,
    LOCAL,
    LOINC,
    PID,
    SCT,
    birth_date_for_age,
    coded,
    condition,
    days_ago,
    interpretation,
    obs,
    patient,
    qty,
)

Json = dict[str, Any]

NOTHING_RECORDED: dict[str, str] = {
    "anti_nxp2_positive": "unknown",
    "jdm_diagnosis": "unknown",
    "bmi_lt_15": "unknown",
    "muscle_strength_le_3": "unknown",
    "edema": "unknown",
    "skin_ulcer": "unknown",
    "bulbar_weakness": "unknown",
    "ild": "unknown",
    "ana_positive": "unknown",
    "ro52_positive": "unknown",
    "cd4_cd8_lt_1_4": "unknown",
    "ferritin_gt_200": "unknown",
}
MUSCLE_CODE = "MMT-PROX"
MUSCLE_LOCAL = {"muscle_strength_le_3": [f"{LOCAL}|{MUSCLE_CODE}"]}


JDM_CODES = frozenset({"M33.00", "M33.01", "M33.02", "M33.03", "M33.09", "M3300", "M33.0", "1212005"})


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    chart: list[Json]
    states: dict[str, str]
    refractory: str | None
    gi: str | None
    eligible: bool = True
    screening: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    at: datetime = AT
    local_codes: dict[str, list[str]] = field(default_factory=dict)
    patient_id: str = PID
    jdm: bool = True
    """Add the child's recorded JDM (a confirmed, active Condition) unless the chart already codes one."""
    notice: str | None = None
    """The info card expected instead of risk cards (``diagnosis-not-recorded``, ``age-unknown``)."""

    @property
    def adds_jdm(self) -> bool:
        return self.jdm and not any(
            r.get("resourceType") == "Condition"
            and any(c.get("code") in JDM_CODES for c in (r.get("code") or {}).get("coding", []))
            for r in self.chart
        )

    @property
    def resources(self) -> list[Json]:
        if not self.adds_jdm:
            return self.chart
        return [*self.chart, condition("M33.00", rid="jdm-recorded", onset=days_ago(500, self.at))]

    @property
    def expected_states(self) -> dict[str, str]:
        added = {"jdm_diagnosis": "present"} if self.adds_jdm else {}
        return {**NOTHING_RECORDED, **added, **self.states}

    @property
    def expected_card_count(self) -> int:
        if self.screening or self.notice:
            return 1
        return sum(t is not None for t in (self.refractory, self.gi)) if self.eligible else 0


def nxp2_positive(when: str | None = None, **fields: Any) -> Json:
    """Anti-NXP2 as most labs send it: a local code, the antibody named in the text, a coded answer."""
    values = {"valueCodeableConcept": coded(SCT, "10828004", "Positive")} | fields
    text = "NXP2 (Nuclear matrix protein-2) Ab"
    return obs("MYO-NXP2", system=LOCAL, text=text, when=when or days_ago(400), **values)


def ferritin(
    value: float, unit: str = "ng/mL", *, code: str = "2276-4", comparator: str | None = None, **kw: Any
) -> Json:
    return obs(code, **qty(value, unit, comparator=comparator), **kw)


def muscle(value: Json, **kw: Any) -> Json:
    return obs(MUSCLE_CODE, system=LOCAL, text="Hip flexor strength (MRC)", **value, **kw)


def edema_chart() -> list[Json]:
    """The chart the HTTP tests call the hook with: an anti-NXP2 positive child with JDM and oedema (R60.0), which
    gives two warning cards (refractory and GI perforation/death), each with its suggestions."""
    return [patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")]


CASES: list[Case] = [
    Case(
        "typical_fatal_course",
        "The paper's typical fatal course: edema, skin ulcer, dysphagia, BMI < 15 and ANA positive.",
        [
            patient(birth=birth_date_for_age(6)),
            nxp2_positive(),
            condition("M33.02"),
            condition("49563000", system=SCT, onset=days_ago(30)),
            condition("L98.499"),
            condition("R13.12"),
            obs("39156-5", **qty(13.4, "kg/m2")),
            obs("5048-4", valueString="1:320"),
            ferritin(640),
        ],
        {
            "anti_nxp2_positive": "present",
            "jdm_diagnosis": "present",
            "edema": "present",
            "skin_ulcer": "present",
            "bulbar_weakness": "present",
            "bmi_lt_15": "present",
            "ana_positive": "present",
            "ferritin_gt_200": "present",
        },
        refractory="warning",
        gi="critical",
        values={"bmi_lt_15": 13.4, "ferritin_gt_200": 640.0, "ana_positive": "1:320"},
    ),
    Case(
        "refractory_only",
        "Refractory predictors (ferritin, CD4/CD8, weak muscles) without any GI predictor present: GI info card only.",
        [
            patient(),
            nxp2_positive(),
            ferritin(350),
            obs("54218-3", **qty(1.1, "{ratio}")),
            muscle({"valueString": "3/5"}),
            obs("39156-5", **qty(17.2, "kg/m2")),
            obs("8061-4", valueCodeableConcept=coded(SCT, "260385009", "Negative")),
        ],
        {
            "anti_nxp2_positive": "present",
            "ferritin_gt_200": "present",
            "cd4_cd8_lt_1_4": "present",
            "muscle_strength_le_3": "present",
            "bmi_lt_15": "absent",
            "ana_positive": "absent",
        },
        refractory="warning",
        gi="info",  # no GI predictor present, but edema, ulcer and dysphagia are not recorded: examine for them
        local_codes=MUSCLE_LOCAL,
        values={"cd4_cd8_lt_1_4": 1.1, "muscle_strength_le_3": 3.0},
    ),
    Case(
        "jdm_anti_nxp2_unknown",
        "A child with JDM and no anti-NXP2 result gets the screening card only.",
        [patient(), condition("M33.09"), ferritin(500)],
        {"jdm_diagnosis": "present", "ferritin_gt_200": "present"},
        refractory=None,
        gi=None,
        eligible=False,
        screening=True,
    ),
    Case(
        "jdm_anti_nxp2_negative",
        "Anti-NXP2 negative JDM: the model does not apply, no card.",
        [
            patient(),
            condition("1212005", system=SCT),
            obs("MYO-NXP2", system=LOCAL, text="Anti-NXP-2 (MJ) antibody", valueString="Negative"),
            condition("R60.0"),
        ],
        {"jdm_diagnosis": "present", "anti_nxp2_positive": "absent", "edema": "present"},
        refractory=None,
        gi=None,
        eligible=False,
    ),
    Case(
        "adult_anti_nxp2_positive",
        "An adult with anti-NXP2 positive dermatomyositis is outside the cohort: no card.",
        [patient(birth=birth_date_for_age(34)), nxp2_positive(), condition("R60.1"), condition("L98.419")],
        {"anti_nxp2_positive": "present", "edema": "present", "skin_ulcer": "present"},
        refractory=None,
        gi=None,
        eligible=False,
    ),
    Case(
        "missing_labs",
        "Eligible but nothing measured: both outcomes at info, every lab not assessed (unknown is not absent).",
        [patient(), nxp2_positive()],
        {"anti_nxp2_positive": "present"},
        refractory="info",
        gi="info",
    ),
    Case(
        "ferritin_pmol_per_litre",
        "Ferritin in pmol/L (14723-1) is converted with ng/mL = pmol/L / 2.247: 500 pmol/L = 222.5 ng/mL.",
        [patient(), nxp2_positive(), ferritin(500, "pmol/L", code="14723-1")],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "present"},
        refractory="warning",
        gi="info",
        values={"ferritin_gt_200": 222.5195},
    ),
    Case(
        "ferritin_ug_per_litre_free_text_unit",
        "Ferritin 150 ug/L written as free text 'mcg/L' (no UCUM code): 150 ng/mL, absent.",
        [patient(), nxp2_positive(), obs("20567-4", **qty(150, "mcg/L", ucum=False))],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "absent"},
        refractory="info",
        gi="info",
        values={"ferritin_gt_200": 150.0},
    ),
    Case(
        "ferritin_mass_or_moles_code_molar_value",
        "35209-6 (mass or moles) with a molar unit: 400 pmol/L = 178 ng/mL, absent.",
        [patient(), nxp2_positive(), ferritin(400, "pmol/L", code="35209-6")],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "absent"},
        refractory="info",
        gi="info",
    ),
    Case(
        "ferritin_comparators",
        "'>2000 ng/mL' is above 200 (present); a later '<500' could be either, so the earlier one decides.",
        [
            patient(),
            nxp2_positive(),
            ferritin(2000, comparator=">", when=days_ago(60)),
            ferritin(500, comparator="<", when=days_ago(5)),
        ],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "present"},
        refractory="warning",
        gi="info",
    ),
    Case(
        "bmi_computed_pounds_inches",
        "BMI computed from 30 [lb_av] and 40 [in_i] measured 20 days apart: 13.2 kg/m2, present.",
        [
            patient(),
            nxp2_positive(),
            obs("29463-7", **qty(30, "[lb_av]"), when=days_ago(10)),
            obs("8302-2", **qty(40, "[in_i]"), when=days_ago(30)),
        ],
        {"anti_nxp2_positive": "present", "bmi_lt_15": "present"},
        refractory="info",
        gi="warning",
        values={"bmi_lt_15": 13.1822},
    ),
    Case(
        "bmi_computed_grams_metres",
        "BMI from 18000 g and 1.05 m (free-text units 'g' and 'm'): 16.3 kg/m2, absent.",
        [
            patient(),
            nxp2_positive(),
            obs("3141-9", **qty(18000, "g", ucum=False)),
            obs("8306-3", **qty(1.05, "m", ucum=False)),
        ],
        {"anti_nxp2_positive": "present", "bmi_lt_15": "absent"},
        refractory="info",
        gi="info",
        values={"bmi_lt_15": 16.3265},
    ),
    Case(
        "bmi_weight_height_too_far_apart",
        "Weight and height 45 days apart (pairing window 30 days) give no BMI: unknown.",
        [
            patient(),
            nxp2_positive(),
            obs("29463-7", **qty(12, "kg"), when=days_ago(5)),
            obs("8302-2", **qty(100, "cm"), when=days_ago(50)),
        ],
        {"anti_nxp2_positive": "present", "bmi_lt_15": "unknown"},
        refractory="info",
        gi="info",
    ),
    Case(
        "cd4_cd8_from_absolute_counts",
        "CD4/CD8 computed from absolute counts taken together, in different units: 0.5 10*3/uL / 450 /uL = 1.11.",
        [
            patient(),
            nxp2_positive(),
            obs("24467-3", **qty(0.5, "10*3/uL"), when="2026-11-01T08:00:00Z"),
            obs("14135-8", **qty(450, "cells/uL", ucum=False), when="2026-11-01T08:10:00Z"),
        ],
        {"anti_nxp2_positive": "present", "cd4_cd8_lt_1_4": "present"},
        refractory="warning",
        gi="info",
        values={"cd4_cd8_lt_1_4": 1.1111},
    ),
    Case(
        "cd4_cd8_percentages_not_together",
        "CD4% and CD8% drawn two days apart are not paired: the ratio stays unknown.",
        [
            patient(),
            nxp2_positive(),
            obs("8123-2", **qty(30, "%"), when="2026-11-01T08:00:00Z"),
            obs("8101-8", **qty(40, "%"), when="2026-11-03T08:00:00Z"),
        ],
        {"anti_nxp2_positive": "present", "cd4_cd8_lt_1_4": "unknown"},
        refractory="info",
        gi="info",
    ),
    Case(
        "cd4_cd8_panel_components",
        "A lymphocyte panel with CD4% and CD8% as components: ratio 45/25 = 1.8, absent.",
        [
            patient(),
            nxp2_positive(),
            obs(
                "LYMPH-PANEL",
                system=LOCAL,
                text="Lymphocyte subsets",
                component=[
                    {"code": coded(LOINC, "8123-2"), **qty(45, "%")},
                    {"code": coded(LOINC, "8101-8"), **qty(25, "%")},
                ],
            ),
        ],
        {"anti_nxp2_positive": "present", "cd4_cd8_lt_1_4": "absent"},
        refractory="info",
        gi="info",
        values={"cd4_cd8_lt_1_4": 1.8},
    ),
    Case(
        "ana_interpretation_wins_over_titer",
        "ANA 1:40 (under the 1:80 cutoff) that the lab flags POS is positive.",
        [patient(), nxp2_positive(), obs("5048-4", valueString="1:40", **interpretation("POS"))],
        {"anti_nxp2_positive": "present", "ana_positive": "present"},
        refractory="info",
        gi="warning",
    ),
    Case(
        "ana_normal_interpretation_wins_over_high_titer",
        "ANA 1:320 that the lab flags N (normal) is negative.",
        [patient(), nxp2_positive(), obs("29953-7", valueString="1:320", **interpretation("N"))],
        {"anti_nxp2_positive": "present", "ana_positive": "absent"},
        refractory="info",
        gi="info",
    ),
    Case(
        "ana_titer_as_ratio",
        "ANA titer as valueRatio 1/160: at or above 1:80, positive.",
        [
            patient(),
            nxp2_positive(),
            obs("5048-4", valueRatio={"numerator": {"value": 1}, "denominator": {"value": 160}}),
        ],
        {"anti_nxp2_positive": "present", "ana_positive": "present"},
        refractory="info",
        gi="warning",
    ),
    Case(
        "ana_titer_as_quantity_below_cutoff",
        "ANA titer as valueQuantity 40 {titer}: below 1:80, negative.",
        [patient(), nxp2_positive(), obs("5048-4", **qty(40, "{titer}"))],
        {"anti_nxp2_positive": "present", "ana_positive": "absent"},
        refractory="info",
        gi="info",
    ),
    Case(
        "ana_titer_exactly_at_cutoff",
        "ANA '1:80' is positive: the cutoff is inclusive.",
        [patient(), nxp2_positive(), obs("5048-4", valueString="1:80")],
        {"anti_nxp2_positive": "present", "ana_positive": "present"},
        refractory="info",
        gi="warning",
    ),
    Case(
        "ana_equivocal",
        "ANA 'Equivocal' leaves ANA unknown (not negative).",
        [patient(), nxp2_positive(), obs("8061-4", valueString="Equivocal")],
        {"anti_nxp2_positive": "present", "ana_positive": "unknown"},
        refractory="info",
        gi="info",
    ),
    Case(
        "ana_units_against_reference_range",
        "ANA 45 U/mL with reference range high 20 is positive.",
        [
            patient(),
            nxp2_positive(),
            obs("27200-5", **qty(45, "U/mL"), referenceRange=[{"high": {"value": 20, "unit": "U/mL"}}]),
        ],
        {"anti_nxp2_positive": "present", "ana_positive": "present"},
        refractory="info",
        gi="warning",
    ),
    Case(
        "anti_nxp2_quantity_against_text_range",
        "Anti-NXP2 25 SI against a Quest-style text range '<11' is positive; Ro52 'Not detected' is negative.",
        [
            patient(),
            obs(
                "NXP2-LB", system=LOCAL, text="NXP-2 Ab", **qty(25, "SI", ucum=False), referenceRange=[{"text": "<11"}]
            ),
            obs("53016-2", valueCodeableConcept=coded(SCT, "260415000", "Not detected")),
        ],
        {"anti_nxp2_positive": "present", "ro52_positive": "absent"},
        refractory="info",
        gi="info",
    ),
    Case(
        "anti_nxp2_by_display_and_interpretation",
        "Anti-MJ named only in coding.display, with interpretation DET and no value: positive.",
        [
            patient(),
            obs("X-771", system=LOCAL, display="Anti-MJ antibody (line immunoassay)", **interpretation("DET")),
        ],
        {"anti_nxp2_positive": "present"},
        refractory="info",
        gi="info",
    ),
    Case(
        "anti_nxp2_site_local_code",
        "A site's own code for anti-NXP2 (configured local code, no text) with valueBoolean true: positive.",
        [patient(), obs("MX2", system=LOCAL, valueBoolean=True)],
        {"anti_nxp2_positive": "present"},
        refractory="info",
        gi="info",
        local_codes={"anti_nxp2_positive": [f"{LOCAL}|MX2"]},
    ),
    Case(
        "observation_status_rules",
        "Preliminary and entered-in-error ferritins are ignored; the amended one (250) counts.",
        [
            patient(),
            nxp2_positive(),
            ferritin(900, status="preliminary", when=days_ago(2)),
            ferritin(950, status="entered-in-error", when=days_ago(3)),
            ferritin(250, status="amended", when=days_ago(20)),
        ],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "present"},
        refractory="warning",
        gi="info",
        values={"ferritin_gt_200": 250.0},
    ),
    Case(
        "condition_status_rules",
        "Resolved edema and refuted ulcer are recorded absent; relapsed dysphagia counts; ILD without clinicalStatus "
        "is no record (unknown); abated edema without clinicalStatus is absent.",
        [
            patient(),
            nxp2_positive(),
            condition("R60.0", clinical="resolved"),
            condition("46742003", system=SCT, verification="refuted"),
            condition("40739000", system=SCT, clinical="relapse"),
            condition("J84.9", clinical=None),
            condition("267038008", system=SCT, clinical=None, abatementDateTime=days_ago(40)),
        ],
        {"anti_nxp2_positive": "present", "bulbar_weakness": "present", "edema": "absent", "skin_ulcer": "absent"},
        refractory="warning",
        gi="warning",
    ),
    Case(
        "other_patients_data_ignored",
        "Resources whose subject is another patient are ignored, even when they would be positive.",
        [
            patient(),
            nxp2_positive(),
            ferritin(900, pid="someone-else"),
            condition("R60.0", pid="someone-else"),
            patient(pid="someone-else"),
        ],
        {"anti_nxp2_positive": "present"},
        refractory="info",
        gi="info",
    ),
    Case(
        "transaction_bundle_urn_uuid_references",
        "Resources of a transaction Bundle that point at the patient through its urn:uuid fullUrl count.",
        [
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"fullUrl": "urn:uuid:8f3e0d5a-0000-4000-8000-000000000001", "resource": patient()},
                    {
                        "fullUrl": "urn:uuid:8f3e0d5a-0000-4000-8000-000000000002",
                        "resource": nxp2_positive()
                        | {"subject": {"reference": "urn:uuid:8f3e0d5a-0000-4000-8000-000000000001"}},
                    },
                    {
                        "fullUrl": "urn:uuid:8f3e0d5a-0000-4000-8000-000000000003",
                        "resource": condition("L98.421")
                        | {"subject": {"reference": "urn:uuid:8f3e0d5a-0000-4000-8000-000000000001"}},
                    },
                ],
            }
        ],
        {"anti_nxp2_positive": "present", "skin_ulcer": "present"},
        refractory="warning",
        gi="warning",
    ),
    Case(
        "lookback_edges",
        "Ferritin exactly 180 days old counts; CD4/CD8 181 days old does not (unknown); an edema finding 181 days "
        "old does not (absent); a 10-year-old anti-NXP2 result still counts.",
        [
            patient(birth="2012-01-01"),
            nxp2_positive(when=days_ago(3650)),
            ferritin(300, when=days_ago(180)),
            obs("54218-3", **qty(0.9, "{ratio}"), when=days_ago(181)),
            obs("267038008", system=SCT, valueBoolean=True, when=days_ago(181)),
        ],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "present", "cd4_cd8_lt_1_4": "unknown"},
        refractory="warning",
        gi="info",
    ),
    Case(
        "latest_value_wins",
        "Ferritin 300 (100 days ago) then 150 (10 days ago): the latest, absent.",
        [patient(), nxp2_positive(), ferritin(300, when=days_ago(100)), ferritin(150, when=days_ago(10))],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "absent"},
        refractory="info",
        gi="info",
        values={"ferritin_gt_200": 150.0},
    ),
    Case(
        "same_time_disagreement_resolves_to_present",
        "Two ferritins at the same time (150 and 260): the predictor is present, showing 260.",
        [
            patient(),
            nxp2_positive(),
            ferritin(150, when="2026-11-10T09:00:00Z"),
            ferritin(260, code="20567-4", when="2026-11-10T09:00:00Z"),
        ],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "present"},
        refractory="warning",
        gi="info",
        values={"ferritin_gt_200": 260.0},
    ),
    Case(
        "finding_observations",
        "Edema as valueBoolean true; skin ulcer coded Absent; hoarseness as the value of a generic finding; "
        "ILD recorded by an Observation coded as the finding with no value.",
        [
            patient(),
            nxp2_positive(),
            obs("267038008", system=SCT, valueBoolean=True),
            obs("46742003", system=SCT, valueCodeableConcept=coded(SCT, "2667000", "Absent")),
            obs("FINDING", system=LOCAL, text="Exam finding", valueCodeableConcept=coded(SCT, "50219008", "Hoarse")),
            obs("233703007", system=SCT),
        ],
        {
            "anti_nxp2_positive": "present",
            "edema": "present",
            "skin_ulcer": "absent",
            "bulbar_weakness": "present",
            "ild": "present",
        },
        refractory="warning",
        gi="warning",  # edema + dysphagia: dysphagia (two-sided P = 0.091) does not count toward critical
    ),
    Case(
        "muscle_grades_weakest_at_latest_time",
        "Two proximal grades at the latest time, '4' and '3-': the weakest (2.67) counts; an older '2' is superseded.",
        [
            patient(),
            nxp2_positive(),
            muscle({"valueString": "2"}, when=days_ago(90)),
            muscle({"valueInteger": 4}, when=days_ago(7)),
            muscle({"valueString": "3-"}, when=days_ago(7)),
        ],
        {"anti_nxp2_positive": "present", "muscle_strength_le_3": "present"},
        refractory="warning",
        gi="info",
        local_codes=MUSCLE_LOCAL,
        values={"muscle_strength_le_3": 2.6667},
    ),
    Case(
        "muscle_grade_three_plus_is_not_weak",
        "MRC '3+' is stronger than 3: absent; with every other predictor normal or examined absent, no card at all.",
        [
            patient(),
            nxp2_positive(),
            obs("267038008", system=SCT, valueBoolean=False),
            obs("46742003", system=SCT, valueBoolean=False),
            obs("40739000", system=SCT, valueBoolean=False),
            muscle({"valueString": "3+"}),
            ferritin(80),
            obs("54218-3", **qty(2.1, "{ratio}")),
            obs("39156-5", **qty(16.0, "kg/m2")),
            obs("8061-4", valueString="Negative"),
        ],
        {
            "anti_nxp2_positive": "present",
            "muscle_strength_le_3": "absent",
            "ferritin_gt_200": "absent",
            "cd4_cd8_lt_1_4": "absent",
            "bmi_lt_15": "absent",
            "edema": "absent",
            "skin_ulcer": "absent",
            "bulbar_weakness": "absent",
            "ana_positive": "absent",
        },
        refractory=None,
        gi=None,
        local_codes=MUSCLE_LOCAL,
    ),
    Case(
        "invalid_resource_falls_back_to_older_valid",
        "The newest ferritin fails R4 validation (value is text): skipped; the older valid 250 decides.",
        [
            patient(),
            nxp2_positive(),
            obs("2276-4", valueQuantity={"value": "high", "unit": "ng/mL"}, when=days_ago(2)),
            ferritin(250, when=days_ago(30)),
        ],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "present"},
        refractory="warning",
        gi="info",
        values={"ferritin_gt_200": 250.0},
    ),
    Case(
        "icd_codes_without_dot_and_oid_systems",
        "JDM as 'M3300' under the ICD-10-CM OID, edema as WHO ICD-10 'R60.0', ulcer as 'l98.411' in lower case.",
        [
            patient(),
            condition("M3300", system="urn:oid:2.16.840.1.113883.6.90"),
            condition("R60.0", system=ICD10),
            condition("l98.411"),
        ],
        {"jdm_diagnosis": "present", "edema": "present", "skin_ulcer": "present"},
        refractory=None,
        gi=None,
        eligible=False,
        screening=True,
    ),
    Case(
        "age_exactly_eighteen",
        "On the 18th birthday, with no onset recorded, the patient is no longer eligible (age < 18 required).",
        [patient(birth=birth_date_for_age(18)), nxp2_positive(), condition("M33.00")],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        refractory=None,
        gi=None,
        eligible=False,
    ),
    Case(
        "age_one_day_before_eighteen",
        "The day before the 18th birthday the patient is eligible.",
        [patient(birth=birth_date_for_age(17, extra_days=364)), nxp2_positive()],
        {"anti_nxp2_positive": "present"},
        refractory="info",
        gi="info",
    ),
    Case(
        "partial_birth_date",
        "A birth date given as a year only ('2016') is read as 1 January: age 10, eligible.",
        [patient(birth="2016"), nxp2_positive()],
        {"anti_nxp2_positive": "present"},
        refractory="info",
        gi="info",
    ),
    Case(
        "no_birth_date",
        "Without a birth date the age is unknown: no risk cards, one info card saying age is needed.",
        [patient(birth=None), nxp2_positive(), condition("R60.0")],
        {"anti_nxp2_positive": "present", "edema": "present"},
        refractory=None,
        gi=None,
        eligible=False,
        notice="age-unknown",
    ),
    Case(
        "future_dated_result_ignored",
        "A ferritin dated 3 days after the evaluation time is ignored (clock-skew allowance 24 h).",
        [patient(), nxp2_positive(), ferritin(600, when=days_ago(-3))],
        {"anti_nxp2_positive": "present", "ferritin_gt_200": "unknown"},
        refractory="info",
        gi="info",
    ),
    Case(
        "gi_warning_with_one_predictor",
        "One GI predictor (skin ulcer) gives a GI warning; it also drives a refractory warning.",
        [patient(), nxp2_positive(), condition("19429009", system=SCT), obs("39156-5", **qty(15.0, "kg/m2"))],
        {"anti_nxp2_positive": "present", "skin_ulcer": "present", "bmi_lt_15": "absent"},
        refractory="warning",
        gi="warning",
    ),
]
