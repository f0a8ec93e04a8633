"""Clinical variations: charts written the way hospital feeds write them, and what the service must conclude.

Each :class:`Variation` is one small chart (a child of 8 unless it says otherwise, at the evaluation time ``AT``)
and one behaviour, taken from the clinical rules of issue 11: anti-NXP2 read as a myositis serologist reads it
(panels, values in English and Chinese, reference ranges, NMP22, conflicting and preliminary results), Conditions
read as a clinician reads a problem list (suspected, refuted, resolved, abated, entered-in-error, no clinical
status, ICD-10-CM headers and dot-less codes, WHO ICD-10 national extensions), "not recorded is not absent",
eligibility faithful to the cohort (diagnosis, age at onset, missing birth date), values as laboratories write them
(pmol/L, ">1000", implausible units, titres with a pattern, Roman and Chinese muscle grades, pairing windows) and
the tier rules (dysphagia, P = 0.091 two-sided, does not count toward critical).

Every variation is checked three ways, each its own test so a failure says which kind of promise broke:

- the predictor states (and, where it matters, the basis code, the normalised value, the skip reasons),
- the card indicators: which cards (``<outcome>:<tier>``, ``screening``, ``notice:<reason>``, or none), the
  assessment's decision code, and that the response validates against the CDS Hooks schema,
- what the cards tell the clinician: substrings of summary + detail as the clinician reads them (markdown escapes
  and HTML entities undone), substrings of the suggestions' ``reasonCode`` (plain FHIR text, read as is), and
  which tests are (not) suggested.

The variation's id is the pytest param id; its one-line description is shown with every failed assertion.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from cds_service.contracts import EXTENSION_KEY
from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from cds_service.core.risk import Assessment
from fhir_mappings import PatientFindings, SkipReason
from tests.builders import (
    AT,
    ICD10,
    ICD10CM,
    LOCAL,
    PID,
    SCT,
    assert_valid_cds,
    birth_date_for_age,
    condition,
    interpretation,
    obs,
    patient,
    qty,
)
from tests.engines import shared_engine

Json = dict[str, Any]

R = "refractory"
GI = "gi_perforation_death"
MUSCLE_CODE = "MMT-PROX"
MUSCLE_LOCAL: dict[str, list[str]] = {"muscle_strength_le_3": [f"{LOCAL}|{MUSCLE_CODE}"]}
"""A site's flowsheet row for proximal muscle strength (no standard code exists)."""

NXP2_DATE = "2026-05-02"
NXP2_SHOWN = "May 2, 2026"
"""NXP2_DATE as an English card writes it."""
NXP2_WHEN = f"{NXP2_DATE}T08:00:00Z"
EXAM_DATE = "2026-11-01"
EXAM_SHOWN = "Nov 1, 2026"
"""EXAM_DATE as an English card writes it."""
LAB_DATE = "2026-11-10"
EXAMINE_DRIVERS = "Examine at this visit: edema, skin ulcer, swallowing/voice"


# -- the chart, as feeds write it ------------------------------------------------------------------------


def child(age: int = 8, **extra: Any) -> Json:
    """The Patient resource of a child ``age`` years old at the evaluation time."""
    return patient(birth=birth_date_for_age(age), **extra)


def nxp2(
    value: Json | None = None,
    *,
    text: str = "抗NXP2抗体",
    code: str = "NXP2-LOC",
    when: str = NXP2_WHEN,
    **fields: Any,
) -> Json:
    """An anti-NXP2 result under the laboratory's unmapped local code, named in ``code.text`` (default 阳性)."""
    written = value if value is not None else {"valueString": "阳性"}
    return obs(code, system=LOCAL, text=text, when=when, **written, **fields)


def jdm(code: str = "M33.00", system: str = ICD10CM, **fields: Any) -> Json:
    """A juvenile myositis diagnosis on the problem list (confirmed, active unless ``fields`` say otherwise)."""
    return condition(code, system=system, **fields)


def edema(**fields: Any) -> Json:
    return condition("R60.0", recordedDate=EXAM_DATE, **fields)


def skin_ulcer(**fields: Any) -> Json:
    return condition("L98.411", recordedDate=EXAM_DATE, **fields)


def dysphagia(**fields: Any) -> Json:
    return condition("R13.10", recordedDate=EXAM_DATE, **fields)


def component(name: str, value: str, code: str) -> Json:
    """A panel component named by the laboratory, with a text value."""
    return {"code": {"coding": [{"system": LOCAL, "code": code, "display": name}], "text": name}, "valueString": value}


def myositis_panel(flag: str, nxp2_value: str, mda5_value: str = "阳性") -> Json:
    """A myositis antibody panel: a panel-level interpretation plus NXP2 and MDA5 components."""
    return obs(
        "MSA-16",
        system=LOCAL,
        text="Myositis antibody panel (16 antibodies)",
        when=NXP2_WHEN,
        **interpretation(flag),
        component=[
            component("Anti-NXP2 (MJ) antibody", nxp2_value, "MSA-NXP2"),
            component("Anti-MDA5 antibody", mda5_value, "MSA-MDA5"),
        ],
    )


def ferritin(**value: Any) -> Json:
    return obs("2276-4", when=f"{LAB_DATE}T07:30:00Z", **value)


def muscle(grade: str) -> Json:
    return obs(MUSCLE_CODE, system=LOCAL, text="近端肌力 (MRC)", when=f"{EXAM_DATE}T10:00:00Z", valueString=grade)


def finding_obs(code: str, **value: Any) -> Json:
    """An examination finding Observation coded with SNOMED CT (edema 267038008, ulcer 46742003 ...)."""
    return obs(code, system=SCT, when=f"{EXAM_DATE}T10:00:00Z", **value)


def eligible(*extra: Json) -> list[Json]:
    """An anti-NXP2 positive child of 8 with JDM, plus ``extra``."""
    return [child(), nxp2(), jdm(), *extra]


def risk(refractory: str | None, gi: str | None) -> tuple[str, ...]:
    """The risk cards expected, in the order the service returns them."""
    return tuple(f"{o}:{t}" for o, t in ((R, refractory), (GI, gi)) if t is not None)


SCREENING = ("screening",)
NOTICE_DIAGNOSIS = ("notice:diagnosis-not-recorded",)
NOTICE_AGE = ("notice:age-unknown",)
NO_CARD: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variation:
    id: str
    what: str
    """One line: the behaviour this chart shows."""
    chart: list[Json]
    states: dict[str, str]
    """The predictor states that matter for this behaviour."""
    cards: tuple[str, ...]
    says: tuple[str, ...] = ()
    """Substrings of the cards' summary + detail, as the clinician reads them."""
    never_says: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    """Substrings of some suggestion's ServiceRequest.reasonCode text (plain text)."""
    ordered: tuple[str, ...] = ()
    """Predictors whose test the cards suggest ordering."""
    not_ordered: tuple[str, ...] = ()
    basis: dict[str, str] = field(default_factory=dict)
    values: dict[str, float | str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    """Skip reasons the findings must count."""
    decision: str | None = None
    local_codes: dict[str, list[str]] = field(default_factory=dict)


V = Variation

ANTI_NXP2: list[Variation] = [
    V(
        "panel_flag_A_nxp2_component_negative",
        "Myositis panel flagged A (for MDA5) with the NXP2 component negative: anti-NXP2 absent, no critical card.",
        [child(), jdm(), edema(), skin_ulcer(), myositis_panel("A", "阴性")],
        {"anti_nxp2_positive": "absent", "edema": "present", "skin_ulcer": "present"},
        NO_CARD,
        decision="anti-nxp2-negative",
    ),
    V(
        "panel_flag_H_nxp2_component_negative",
        "Myositis panel flagged H with the NXP2 component 'Negative': anti-NXP2 absent, no risk card.",
        [child(), jdm(), edema(), skin_ulcer(), myositis_panel("H", "Negative")],
        {"anti_nxp2_positive": "absent"},
        NO_CARD,
        decision="anti-nxp2-negative",
    ),
    V(
        "panel_flag_POS_nxp2_component_negative",
        "Myositis panel flagged POS with the NXP2 component '-': anti-NXP2 absent, no risk card.",
        [child(), jdm(), edema(), skin_ulcer(), myositis_panel("POS", "-")],
        {"anti_nxp2_positive": "absent"},
        NO_CARD,
        decision="anti-nxp2-negative",
    ),
    V(
        "panel_nxp2_component_positive",
        "Myositis panel whose NXP2 component is 阳性: anti-NXP2 present, risk cards with the component's value.",
        [child(), jdm(), edema(), skin_ulcer(), myositis_panel("A", "阳性", mda5_value="阴性")],
        {"anti_nxp2_positive": "present", "edema": "present", "skin_ulcer": "present"},
        risk("warning", "critical"),
        says=(f"Why this card: anti-NXP2 阳性 ({NXP2_SHOWN}",),
        values={"anti_nxp2_positive": "阳性"},
    ),
    V(
        "panel_name_lists_nxp2_panel_value_only",
        "Code text '肌炎抗体谱(NXP2, MDA5…)' with a panel-level value only: not positive (panel-level-result).",
        [
            child(),
            jdm(),
            obs("MSA-ALL", system=LOCAL, text="肌炎抗体谱(NXP2, MDA5…)", when=NXP2_WHEN, valueString="阳性(+)"),
        ],
        {"anti_nxp2_positive": "unknown", "jdm_diagnosis": "present"},
        SCREENING,
        skipped=("panel-level-result",),
        ordered=("anti_nxp2_positive",),
    ),
    *[
        V(
            f"name_{slug}",
            f"A single result named {name!r} under an unmapped local code: recognised, anti-NXP2 present.",
            [child(), jdm(), nxp2(text=name)],
            {"anti_nxp2_positive": "present"},
            risk("info", "info"),
            says=(f"anti-NXP2 阳性 ({NXP2_SHOWN}",),
        )
        for slug, name in [
            ("chinese_nxp2", "抗NXP2抗体"),
            ("chinese_nuclear_matrix_protein_2", "抗核基质蛋白2抗体"),
            ("english_hyphenated", "Anti-NXP-2 Ab"),
            ("anti_mj", "anti-MJ"),
            ("p140", "p140"),
        ]
    ],
    V(
        "name_in_coding_display_only",
        "Anti-NXP2 named only in coding.display ('Anti-p140 antibody'), no code.text: recognised.",
        [child(), jdm(), obs("L-771", system=LOCAL, display="Anti-p140 antibody", when=NXP2_WHEN, valueString="+")],
        {"anti_nxp2_positive": "present"},
        risk("info", "info"),
    ),
    *[
        V(
            f"value_positive_{slug}",
            f"Anti-NXP2 written {value!r}: positive.",
            [child(), jdm(), nxp2({"valueString": value})],
            {"anti_nxp2_positive": "present"},
            risk("info", "info"),
            says=(f"anti-NXP2 {value} ({NXP2_SHOWN}",),
            values={"anti_nxp2_positive": value},
        )
        for slug, value in [
            ("two_plus", "++"),
            ("three_plus", "+++"),
            ("one_plus", "+"),
            ("plus_in_brackets", "(+)"),
            ("yangxing", "阳性"),
            ("yangxing_plus", "阳性(+)"),
            ("weak_yangxing", "弱阳性"),
            ("weak_positive", "weak positive"),
            ("detected", "Detected"),
        ]
    ],
    *[
        V(
            f"value_negative_{slug}",
            f"Anti-NXP2 written {value!r}: negative, no card for a JDM child (the model does not apply).",
            [child(), jdm(), edema(), nxp2({"valueString": value})],
            {"anti_nxp2_positive": "absent"},
            NO_CARD,
            decision="anti-nxp2-negative",
        )
        for slug, value in [
            ("minus", "-"),
            ("minus_in_brackets", "(-)"),
            ("yinxing", "阴性"),
            ("not_detected", "Not detected"),
            ("negative_lower_case", "negative"),
        ]
    ],
    *[
        V(
            f"value_equivocal_{slug}",
            f"Anti-NXP2 written {value!r}: equivocal, unknown; the screening card asks to repeat the test.",
            [child(), jdm(), nxp2({"valueString": value})],
            {"anti_nxp2_positive": "unknown"},
            SCREENING,
            says=(f"equivocal ({NXP2_SHOWN}): repeat",),
            reasons=(f"equivocal ({NXP2_SHOWN}): repeat",),
            ordered=("anti_nxp2_positive",),
            basis={"anti_nxp2_positive": "equivocal"},
        )
        for slug, value in [
            ("plus_minus", "±"),
            ("keyi", "可疑"),
            ("borderline", "borderline"),
            ("equivocal", "equivocal"),
        ]
    ],
    V(
        "quantity_above_reference_range_high",
        "Anti-NXP2 25 U/mL with referenceRange.high 10: positive.",
        [child(), jdm(), nxp2(qty(25, "U/mL", ucum=False), referenceRange=[{"high": {"value": 10, "unit": "U/mL"}}])],
        {"anti_nxp2_positive": "present"},
        risk("info", "info"),
        says=(f"anti-NXP2 25 U/mL ({NXP2_SHOWN}",),
    ),
    V(
        "quantity_within_reference_range_high",
        "Anti-NXP2 5 U/mL with referenceRange.high 10: negative.",
        [child(), jdm(), nxp2(qty(5, "U/mL", ucum=False), referenceRange=[{"high": {"value": 10, "unit": "U/mL"}}])],
        {"anti_nxp2_positive": "absent"},
        NO_CARD,
        decision="anti-nxp2-negative",
    ),
    *[
        V(
            f"quantity_against_text_range_{slug}",
            f"Anti-NXP2 25 U/mL against the reference range text {text!r}: positive.",
            [child(), jdm(), nxp2(qty(25, "U/mL", ucum=False), referenceRange=[{"text": text}])],
            {"anti_nxp2_positive": "present"},
            risk("info", "info"),
        )
        for slug, text in [
            ("lt_11", "<11"),
            ("zero_to_ten", "0-10"),
            ("yinxing_lt_11", "阴性<11"),
            ("cut_off_20", "cut-off 20"),
        ]
    ],
    V(
        "value_string_gt_1000_with_range",
        "Anti-NXP2 valueString '>1000' with referenceRange.high 20: positive.",
        [child(), jdm(), nxp2({"valueString": ">1000"}, referenceRange=[{"high": {"value": 20}}])],
        {"anti_nxp2_positive": "present"},
        risk("info", "info"),
        says=(f"anti-NXP2 >1000 ({NXP2_SHOWN}",),
    ),
    V(
        "nmp22_is_not_nxp2",
        "NMP22 (nuclear matrix protein 22, a bladder-cancer marker) positive is not anti-NXP2: still unknown.",
        [
            child(),
            jdm(),
            obs("NMP22", system=LOCAL, text="NMP22 (nuclear matrix protein 22), urine", valueString="Positive"),
        ],
        {"anti_nxp2_positive": "unknown"},
        SCREENING,
        basis={"anti_nxp2_positive": "no-data"},
        skipped=("unrelated",),
        says=("Anti-NXP2 antibody positive: no result on record",),
    ),
    V(
        "same_date_results_disagree",
        "Two NXP2 results on the same date, 阳性 and Negative: conflicting, unknown, the card says so.",
        [
            child(),
            jdm(),
            nxp2(when="2026-10-01T09:00:00Z"),
            nxp2({"valueString": "Negative"}, text="Anti-NXP-2 Ab", code="NXP2-LB", when="2026-10-01T15:00:00Z"),
        ],
        {"anti_nxp2_positive": "unknown"},
        SCREENING,
        basis={"anti_nxp2_positive": "conflicting"},
        says=("conflicting results on Oct 1, 2026: review",),
    ),
    V(
        "preliminary_result",
        "A preliminary NXP2 result never counts: pending, the card says so, and no order is suggested for it.",
        [child(), jdm(), nxp2(status="preliminary", when="2026-11-20T09:00:00Z")],
        {"anti_nxp2_positive": "unknown"},
        SCREENING,
        basis={"anti_nxp2_positive": "pending"},
        skipped=("observation-status-preliminary",),
        says=("anti-NXP2 result pending", "preliminary result of Nov 20, 2026, pending"),
        never_says=("no result on record",),
        not_ordered=("anti_nxp2_positive",),
    ),
    V(
        "registered_result",
        "A registered (ordered, no value yet) NXP2 result: pending, no order suggested.",
        [child(), jdm(), nxp2({}, status="registered", when="2026-11-22T09:00:00Z")],
        {"anti_nxp2_positive": "unknown"},
        SCREENING,
        basis={"anti_nxp2_positive": "pending"},
        skipped=("observation-status-registered",),
        says=("preliminary result of Nov 22, 2026, pending",),
        not_ordered=("anti_nxp2_positive",),
    ),
    V(
        "older_final_positive_newer_preliminary",
        "An older final positive and a newer preliminary negative: the final result decides (present).",
        [child(), jdm(), nxp2(), nxp2({"valueString": "阴性"}, status="preliminary", when="2026-11-20T09:00:00Z")],
        {"anti_nxp2_positive": "present"},
        risk("info", "info"),
        says=(f"anti-NXP2 阳性 ({NXP2_SHOWN}",),
        skipped=("observation-status-preliminary",),
    ),
]

CONDITIONS: list[Variation] = [
    V(
        "edema_confirmed_active",
        "Edema confirmed and active: present, a warning on both outcomes.",
        eligible(edema()),
        {"edema": "present"},
        risk("warning", "warning"),
        says=("Refractory JDM risk: edema", f"active condition ({EXAM_SHOWN})"),
        basis={"edema": "condition"},
    ),
    V(
        "skin_ulcer_relapse_unstated_verification",
        "Skin ulcer in relapse with no verificationStatus: present.",
        eligible(skin_ulcer(clinical="relapse", verification=None)),
        {"skin_ulcer": "present"},
        risk("warning", "warning"),
        says=("GI perforation/death risk: skin ulcer",),
    ),
    *[
        V(
            f"edema_{status}",
            f"Edema with verificationStatus {status}: suspected, not present; the card asks to examine for it.",
            eligible(edema(verification=status)),
            {"edema": "unknown"},
            risk("info", "info"),
            basis={"edema": "suspected"},
            says=(
                f"suspected only ({EXAM_SHOWN}): examine",
                "Examine at this visit: edema",
            ),
        )
        for status in ("unconfirmed", "provisional", "differential")
    ],
    V(
        "edema_refuted",
        "Edema refuted: recorded absent (ruled out).",
        eligible(edema(verification="refuted")),
        {"edema": "absent"},
        risk("info", "info"),
        basis={"edema": "condition-refuted"},
        says=(f"recorded as ruled out ({EXAM_SHOWN})",),
    ),
    *[
        V(
            f"edema_{status}",
            f"Edema with clinicalStatus {status}: recorded absent.",
            eligible(edema(clinical=status)),
            {"edema": "absent"},
            risk("info", "info"),
            basis={"edema": "condition-resolved"},
            says=(f"recorded as resolved or inactive ({EXAM_SHOWN})",),
        )
        for status in ("resolved", "inactive", "remission")
    ],
    V(
        "skin_ulcer_abated_no_clinical_status",
        "Skin ulcer with an abatementDateTime (and no clinicalStatus, as some feeds send it): recorded absent.",
        eligible(skin_ulcer(clinical=None, abatementDateTime="2026-10-15")),
        {"skin_ulcer": "absent"},
        risk("info", "info"),
        basis={"skin_ulcer": "condition-resolved"},
    ),
    V(
        "edema_entered_in_error",
        "Edema entered-in-error does not count at all: not recorded (unknown), the card asks to examine.",
        eligible(edema(verification="entered-in-error")),
        {"edema": "unknown"},
        risk("info", "info"),
        basis={"edema": "not-recorded"},
        skipped=("condition-entered-in-error",),
        says=(EXAMINE_DRIVERS,),
    ),
    V(
        "edema_without_clinical_status",
        "Edema with no clinicalStatus: no record (unknown, not present), the card asks to examine.",
        eligible(edema(clinical=None)),
        {"edema": "unknown"},
        risk("info", "info"),
        basis={"edema": "not-recorded"},
        skipped=("condition-no-clinical-status",),
        says=(EXAMINE_DRIVERS,),
    ),
    *[
        V(
            f"diagnosis_{slug}",
            f"Myositis diagnosis coded {code} ({system.rsplit('/', 1)[-1]}): recognised, the child is eligible.",
            [child(), nxp2(), jdm(code, system=system)],
            {"jdm_diagnosis": "present", "anti_nxp2_positive": "present"},
            risk("info", "info"),
            decision="risk-cards",
        )
        for slug, code, system in [
            ("icd10cm_category_header", "M33.0", ICD10CM),
            ("icd10cm_without_dot", "M3300", ICD10CM),
            ("who_icd10_national_extension", "M33.001", ICD10),
            ("juvenile_polymyositis_icd10cm", "M33.20", ICD10CM),
            ("polymyositis_snomed", "31384009", SCT),
        ]
    ],
    V(
        "skin_ulcer_who_national_extension",
        "Skin ulcer coded L98.401 (WHO ICD-10, national extension of L98.4): present.",
        eligible(condition("L98.401", system=ICD10, recordedDate=EXAM_DATE)),
        {"skin_ulcer": "present"},
        risk("warning", "warning"),
    ),
    V(
        "diagnosis_differential",
        "JDM only as a differential diagnosis: not a recorded diagnosis, the notice card and no risk tiers.",
        [child(), nxp2(), jdm(verification="differential"), edema()],
        {"jdm_diagnosis": "unknown", "anti_nxp2_positive": "present"},
        NOTICE_DIAGNOSIS,
        decision="notice-diagnosis-not-recorded",
    ),
    V(
        "diagnosis_in_remission",
        "JDM in remission is still the recorded diagnosis: eligible.",
        [child(), nxp2(), jdm(clinical="remission")],
        {"jdm_diagnosis": "present"},
        risk("info", "info"),
        basis={"jdm_diagnosis": "condition-history"},
    ),
]

NOT_RECORDED: list[Variation] = [
    V(
        "nothing_examined",
        "No edema, ulcer or dysphagia record either way: unknown, the cards ask to examine, GI at info.",
        eligible(),
        {"edema": "unknown", "skin_ulcer": "unknown", "bulbar_weakness": "unknown"},
        risk("info", "info"),
        basis={"edema": "not-recorded", "skin_ulcer": "not-recorded", "bulbar_weakness": "not-recorded"},
        says=(
            EXAMINE_DRIVERS,
            "GI perforation/death risk unknown: none present — assess edema",
            "not recorded: examine",
        ),
    ),
    V(
        "muscle_grade_not_recorded",
        "No muscle grade recorded: unknown, and the refractory card asks to examine muscle strength at this visit.",
        eligible(),
        {"muscle_strength_le_3": "unknown"},
        risk("info", "info"),
        says=("Examine at this visit: edema, skin ulcer, swallowing/voice, muscle strength",),
        local_codes=MUSCLE_LOCAL,
    ),
    V(
        "ild_not_recorded",
        "No ILD record either way: unknown ('not recorded'), and the card asks to examine for it at this visit.",
        eligible(),
        {"ild": "unknown"},
        risk("info", "info"),
        basis={"ild": "not-recorded"},
        says=("swallowing/voice, muscle strength, ILD.",),
    ),
    V(
        "edema_negative_boolean",
        "An edema finding Observation with valueBoolean false: recorded absent.",
        eligible(finding_obs("267038008", valueBoolean=False)),
        {"edema": "absent"},
        risk("info", "info"),
        basis={"edema": "observation"},
        says=("skin ulcer, swallowing/voice, muscle strength",),
    ),
    V(
        "skin_ulcer_negative_coded_absent",
        "A skin ulcer finding Observation with valueCodeableConcept text 'absent': recorded absent.",
        eligible(finding_obs("46742003", valueCodeableConcept={"text": "absent"})),
        {"skin_ulcer": "absent"},
        risk("info", "info"),
        basis={"skin_ulcer": "observation"},
    ),
    V(
        "dysphagia_negative_chinese_wu",
        "A dysphagia finding Observation with valueCodeableConcept text '无' (none): recorded absent.",
        eligible(finding_obs("40739000", valueCodeableConcept={"text": "无"})),
        {"bulbar_weakness": "absent"},
        risk("info", "info"),
        basis={"bulbar_weakness": "observation"},
    ),
    V(
        "edema_positive_finding_observation",
        "An edema finding Observation with valueBoolean true: present, shown as an examination finding.",
        eligible(finding_obs("267038008", valueBoolean=True)),
        {"edema": "present"},
        risk("warning", "warning"),
        basis={"edema": "observation"},
        says=("examination finding",),
    ),
    V(
        "everything_recorded_absent",
        "Every tier driver recorded absent or normal: no card at all (all-predictors-absent).",
        eligible(
            finding_obs("267038008", valueBoolean=False),
            finding_obs("46742003", valueBoolean=False),
            finding_obs("40739000", valueBoolean=False),
            muscle("5级"),
            ferritin(**qty(80, "ng/mL")),
            obs("54218-3", when=f"{LAB_DATE}T07:30:00Z", **qty(2.0, "{ratio}")),
            obs("39156-5", when=f"{EXAM_DATE}T10:00:00Z", **qty(16.5, "kg/m2")),
            obs("5048-4", when=f"{LAB_DATE}T07:30:00Z", valueString="阴性"),
        ),
        {
            "edema": "absent",
            "skin_ulcer": "absent",
            "bulbar_weakness": "absent",
            "muscle_strength_le_3": "absent",
            "ferritin_gt_200": "absent",
            "cd4_cd8_lt_1_4": "absent",
            "bmi_lt_15": "absent",
            "ana_positive": "absent",
        },
        NO_CARD,
        decision="all-predictors-absent",
        local_codes=MUSCLE_LOCAL,
    ),
]

ELIGIBILITY: list[Variation] = [
    V(
        "positive_without_myositis_diagnosis",
        "Anti-NXP2 positive with edema but no myositis diagnosis: exactly one info notice, no risk tiers.",
        [child(), nxp2(), edema()],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "unknown"},
        NOTICE_DIAGNOSIS,
        says=("applies to juvenile dermatomyositis", f"anti-NXP2 阳性 ({NXP2_SHOWN}"),
        never_says=("GI perforation/death risk (",),
        decision="notice-diagnosis-not-recorded",
    ),
    V(
        "no_birth_date",
        "Anti-NXP2 positive JDM with no birth date: one info notice saying the birth date is needed.",
        [patient(birth=None), nxp2(), jdm(), edema()],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        NOTICE_AGE,
        says=("birth date needed",),
        decision="notice-age-unknown",
    ),
    V(
        "no_patient_resource",
        "Anti-NXP2 positive JDM without the Patient resource: the same age notice.",
        [nxp2(), jdm(), edema()],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        NOTICE_AGE,
        says=("birth date needed",),
        decision="notice-age-unknown",
    ),
    V(
        "adult_now_onset_at_ten",
        "Age 19 now but JDM onset at 10 (onsetDateTime): eligible, the card says the age at onset.",
        [child(19), nxp2(), jdm(onset=f"{AT.year - 9}-12-01"), edema()],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        risk("warning", "warning"),
        says=("age 10 at onset",),
    ),
    V(
        "onset_age_without_birth_date",
        "No birth date, but the diagnosis gives onsetAge 9 a: eligible, age 9 at onset.",
        [
            patient(birth=None),
            nxp2(),
            jdm(onsetAge={"value": 9, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}),
        ],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        risk("info", "info"),
        says=("age 9 at onset",),
    ),
    V(
        "diagnosed_at_twelve_by_recorded_date",
        "Age 19 now, no onset, diagnosis recordedDate when 12: eligible, age at diagnosis (recorded date).",
        [child(19), nxp2(), jdm(recordedDate=f"{AT.year - 7}-12-01")],
        {"jdm_diagnosis": "present"},
        risk("info", "info"),
        says=("age 12 at diagnosis (recorded date)",),
    ),
    V(
        "adult_now_no_onset",
        "Age 19 now and the diagnosis does not say when: outside the cohort, no card.",
        [child(19), nxp2(), jdm(), edema()],
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        NO_CARD,
        decision="age-out-of-range",
    ),
    V(
        "jdm_anti_nxp2_not_tested",
        "JDM and no anti-NXP2 result: the screening card suggests the test ('no result on record').",
        [child(), jdm(), edema()],
        {"anti_nxp2_positive": "unknown", "jdm_diagnosis": "present"},
        SCREENING,
        says=("JDM with anti-NXP2 status unknown: test it", "Anti-NXP2 antibody positive: no result on record"),
        reasons=("no result on record",),
        ordered=("anti_nxp2_positive",),
        decision="screening",
    ),
    V(
        "age_shown_now",
        "Eligible on age now (no onset recorded): the card says 'age 8 now'.",
        eligible(),
        {"anti_nxp2_positive": "present", "jdm_diagnosis": "present"},
        risk("info", "info"),
        says=("age 8 now (no onset recorded)",),
    ),
]

VALUES: list[Variation] = [
    V(
        "ferritin_pmol_per_litre",
        "Ferritin 1100 pmol/L: present, shown as reported with the normalised value beside it.",
        eligible(ferritin(**qty(1100, "pmol/L"))),
        {"ferritin_gt_200": "present"},
        risk("warning", "info"),
        says=("1100 pmol/L = 489.5 ng/mL",),
        values={"ferritin_gt_200": 489.5416},
    ),
    V(
        "ferritin_string_with_unit",
        "Ferritin valueString '>1000 ng/mL': present.",
        eligible(ferritin(valueString=">1000 ng/mL")),
        {"ferritin_gt_200": "present"},
        risk("warning", "info"),
        says=(">1000 ng/mL",),
    ),
    V(
        "ferritin_string_without_unit",
        "Ferritin valueString '>1000' with no unit: unknown, the card and the order say it could not be read.",
        eligible(ferritin(valueString=">1000")),
        {"ferritin_gt_200": "unknown"},
        risk("info", "info"),
        basis={"ferritin_gt_200": "unreadable"},
        says=("result on record could not be read: '>1000'",),
        reasons=("result on record could not be read: '>1000'",),
        ordered=("ferritin_gt_200",),
    ),
    V(
        "ferritin_implausible_unit",
        "Ferritin 300 ug/mL (= 300,000 ng/mL): flagged implausible on the card, never used as present.",
        eligible(ferritin(**qty(300, "ug/mL"))),
        {"ferritin_gt_200": "unknown"},
        risk("info", "info"),
        basis={"ferritin_gt_200": "implausible"},
        says=("300 ug/mL = 300,000.0 ng/mL: implausible, check the unit",),
    ),
    V(
        "ana_titre_with_pattern_positive",
        "ANA '1:100 speckled' (cut-off 1:80): positive, a GI warning showing the value as written.",
        eligible(obs("5048-4", when=f"{LAB_DATE}T07:30:00Z", valueString="1:100 speckled")),
        {"ana_positive": "present"},
        risk("info", "warning"),
        says=("GI perforation/death risk: ANA+", "1:100 speckled"),
        values={"ana_positive": "1:100 speckled"},
    ),
    V(
        "ana_titre_with_pattern_negative",
        "ANA '1:40 speckled' (cut-off 1:80): negative.",
        eligible(obs("5048-4", when=f"{LAB_DATE}T07:30:00Z", valueString="1:40 speckled")),
        {"ana_positive": "absent"},
        risk("info", "info"),
    ),
    *[
        V(
            f"muscle_grade_{slug}",
            f"Proximal muscle grade written {grade!r} (site local code): {'≤ 3, present' if weak else '> 3, absent'}.",
            eligible(muscle(grade)),
            {"muscle_strength_le_3": "present" if weak else "absent"},
            risk("warning" if weak else "info", "info"),
            says=(f"{grade} ({EXAM_SHOWN})",),
            values={"muscle_strength_le_3": value},
            local_codes=MUSCLE_LOCAL,
        )
        for slug, grade, value, weak in [
            ("roman_three_ji", "III级", 3.0, True),
            ("arabic_three_ji", "3级", 3.0, True),
            ("roman_glyph_four_ji", "Ⅳ级", 4.0, False),
            ("jili_four_minus_ji", "肌力4-级", 3.6667, False),
        ]
    ],
    V(
        "cd4_cd8_two_hours_apart",
        "CD4 and CD8 absolute counts 2 h apart (window 24 h): paired, ratio 0.8, present.",
        eligible(
            obs("24467-3", when="2026-11-01T08:00:00Z", **qty(400, "/uL")),
            obs("14135-8", when="2026-11-01T10:00:00Z", **qty(500, "/uL")),
        ),
        {"cd4_cd8_lt_1_4": "present"},
        risk("warning", "info"),
        basis={"cd4_cd8_lt_1_4": "computed"},
        values={"cd4_cd8_lt_1_4": 0.8},
        says=("Refractory JDM risk: CD4/CD8 < 1.4",),
    ),
    V(
        "cd4_cd8_thirty_hours_apart",
        "CD4 and CD8 30 h apart: not paired, unknown, the card and the order say how far apart.",
        eligible(
            obs("24467-3", when="2026-11-01T08:00:00Z", **qty(400, "/uL")),
            obs("14135-8", when="2026-11-02T14:00:00Z", **qty(500, "/uL")),
        ),
        {"cd4_cd8_lt_1_4": "unknown"},
        risk("info", "info"),
        basis={"cd4_cd8_lt_1_4": "unpaired"},
        says=("CD4 and CD8 not measured together (30 h apart)",),
        reasons=("CD4 and CD8 not measured together (30 h apart)",),
    ),
    V(
        "cd4_cd8_same_specimen",
        "CD4 and CD8 reported two days apart from the same specimen.reference: paired.",
        eligible(
            obs("24467-3", when="2026-11-01T08:00:00Z", specimen={"reference": "Specimen/edta-1"}, **qty(400, "/uL")),
            obs("14135-8", when="2026-11-03T14:00:00Z", specimen={"reference": "Specimen/edta-1"}, **qty(500, "/uL")),
        ),
        {"cd4_cd8_lt_1_4": "present"},
        risk("warning", "info"),
        basis={"cd4_cd8_lt_1_4": "computed"},
        values={"cd4_cd8_lt_1_4": 0.8},
    ),
    V(
        "weight_height_45_days_apart",
        "Weight and height 45 days apart (window 30 days): no BMI, unknown, the card says how far apart.",
        eligible(
            obs("29463-7", when="2026-11-15T10:00:00Z", **qty(20, "kg")),
            obs("8302-2", when="2026-10-01T10:00:00Z", **qty(120, "cm")),
        ),
        {"bmi_lt_15": "unknown"},
        risk("info", "info"),
        basis={"bmi_lt_15": "unpaired"},
        says=("weight and height not measured together (45 days apart)",),
        reasons=("weight and height not measured together (45 days apart)",),
    ),
]

TIERS: list[Variation] = [
    V(
        "gi_edema_and_dysphagia_is_warning",
        "Edema + dysphagia (P = 0.091 two-sided, not significant): GI warning, not critical.",
        eligible(edema(), dysphagia()),
        {"edema": "present", "bulbar_weakness": "present"},
        risk("warning", "warning"),
        says=("GI perforation/death risk: edema, dysphagia/hoarseness",),
        never_says=("(critical)",),
    ),
    V(
        "gi_dysphagia_and_ana_is_warning",
        "Dysphagia + ANA positive: only one significant driver, GI warning.",
        eligible(dysphagia(), obs("5048-4", when=f"{LAB_DATE}T07:30:00Z", valueString="1:320")),
        {"bulbar_weakness": "present", "ana_positive": "present"},
        risk("warning", "warning"),
    ),
    V(
        "gi_edema_and_skin_ulcer_is_critical",
        "Edema + skin ulcer (both significant two-sided): GI critical.",
        eligible(edema(), skin_ulcer()),
        {"edema": "present", "skin_ulcer": "present"},
        risk("warning", "critical"),
        says=("High GI perforation/death risk: edema, skin ulcer",),
    ),
    V(
        "gi_low_bmi_and_ana_is_critical",
        "BMI 13.2 + ANA 1:640 (both significant two-sided): GI critical.",
        eligible(
            obs("39156-5", when=f"{EXAM_DATE}T10:00:00Z", **qty(13.2, "kg/m2")),
            obs("5048-4", when=f"{LAB_DATE}T07:30:00Z", valueString="1:640"),
        ),
        {"bmi_lt_15": "present", "ana_positive": "present"},
        risk("info", "critical"),
    ),
]

VARIATIONS: list[Variation] = [*ANTI_NXP2, *CONDITIONS, *NOT_RECORDED, *ELIGIBILITY, *VALUES, *TIERS]
PARAMS = [pytest.param(v, id=v.id) for v in VARIATIONS]


# -- running a variation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    assessment: Assessment
    findings: PatientFindings
    """Every predictor evaluated (the engine itself stops early when no card is possible)."""
    cards: list[Json]
    engine: Engine


_results: dict[int, Result] = {}


def run(variation: Variation) -> Result:
    """Assess the chart and render its cards (once per variation)."""
    if id(variation) not in _results:
        engine = shared_engine(variation.local_codes)
        assessment = engine.assess(variation.chart, patient_id=PID, at=AT)
        findings = engine.reader.read(variation.chart, patient_id=PID, at=AT).findings()
        context = CardContext(hook_instance="0f6b2d1c-3a4e-4c5f-8a9b-1c2d3e4f5a6b", patient_id=PID)
        _results[id(variation)] = Result(assessment, findings, engine.cards(assessment, context), engine)
    return _results[id(variation)]


def card_label(card: Json) -> str:
    extension = card["extension"][EXTENSION_KEY]
    if extension["cardType"] == "risk":
        return f"{extension['outcome']}:{extension['tier']}"
    if extension["cardType"] == "notice":
        return f"notice:{extension['eligibility']['reason']}"
    return str(extension["cardType"])


_MARKDOWN_ESCAPE = re.compile(r"\\(.)")


def as_read(markdown: str) -> str:
    """Markdown as the clinician reads it: backslash escapes, HTML entities and bold markers undone."""
    return html.unescape(_MARKDOWN_ESCAPE.sub(r"\1", markdown)).replace("**", "")


def card_text(cards: list[Json]) -> str:
    return "\n".join(as_read(f"{card['summary']}\n{card['detail']}") for card in cards)


def reason_texts(cards: list[Json]) -> list[str]:
    return [
        reason["text"]
        for card in cards
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        for reason in action["resource"].get("reasonCode", [])
    ]


def ordered_predictors(result: Result) -> set[str]:
    """The predictors whose test some suggestion orders (matched on the suggestion label)."""
    words = result.engine.knowledge.wording
    by_label = {
        words.suggestion_label.format(test=p.test): pid for pid, p in result.engine.knowledge.predictors.items()
    }
    return {
        by_label[s["label"]] for card in result.cards for s in card.get("suggestions", []) if s["label"] in by_label
    }


# -- the tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variation", PARAMS)
def test_predictor_states(variation: Variation) -> None:
    """The predictors that matter have the expected state, basis, normalised value and skip reasons."""
    findings = run(variation).findings
    states = {pid: findings.predictors[pid].state.value for pid in variation.states}
    assert states == variation.states, variation.what
    bases = {pid: findings.predictors[pid].basis for pid in variation.basis}
    assert bases == variation.basis, variation.what
    for pid, expected in variation.values.items():
        value = findings.predictors[pid].value
        if isinstance(expected, float):
            assert value == pytest.approx(expected, rel=1e-3), variation.what
        else:
            assert value == expected, variation.what
    missing = [reason for reason in variation.skipped if not findings.skipped.get(SkipReason(reason))]
    assert not missing, f"{variation.what} — skipped: {dict(findings.skipped)}"


@pytest.mark.parametrize("variation", PARAMS)
def test_card_indicators(variation: Variation) -> None:
    """The expected cards (outcome and tier, screening, which notice, or none) in a schema-valid response, and the
    expected decision code."""
    result = run(variation)
    assert_valid_cds("serviceResponse", {"cards": result.cards})
    assert tuple(card_label(c) for c in result.cards) == variation.cards, variation.what
    for card in result.cards:
        tier = card["extension"][EXTENSION_KEY]["tier"]
        assert card["indicator"] == tier, variation.what
    if variation.decision is not None:
        assert result.assessment.decision == variation.decision, variation.what


@pytest.mark.parametrize("variation", PARAMS)
def test_card_text(variation: Variation) -> None:
    """The cards tell the clinician what the chart says (summary, detail), the orders say why, and the tests
    suggested are the expected ones."""
    result = run(variation)
    text = card_text(result.cards)
    for expected in variation.says:
        assert expected in text, f"{variation.what}\nmissing {expected!r} in:\n{text}"
    for unexpected in variation.never_says:
        assert unexpected not in text, f"{variation.what}\nunexpected {unexpected!r} in:\n{text}"
    reasons = reason_texts(result.cards)
    for expected in variation.reasons:
        assert any(expected in r for r in reasons), f"{variation.what}\nmissing {expected!r} in {reasons}"
    ordered = ordered_predictors(result)
    assert set(variation.ordered) <= ordered, variation.what
    assert not set(variation.not_ordered) & ordered, variation.what


RESULT_ON_RECORD = [
    pytest.param(v, id=v.id)
    for v in VARIATIONS
    if v.cards == SCREENING and v.basis.get("anti_nxp2_positive") in ("pending", "equivocal", "conflicting")
]


@pytest.mark.parametrize("variation", RESULT_ON_RECORD)
def test_screening_card_does_not_deny_a_result_on_record(variation: Variation) -> None:
    """When an anti-NXP2 result is on record (pending, equivocal or conflicting), the screening card does not tell
    the clinician that there is no result."""
    text = card_text(run(variation).cards)
    assert "no anti-NXP2 (anti-MJ) antibody result" not in text, variation.what
    assert "no result on record" not in text, variation.what
