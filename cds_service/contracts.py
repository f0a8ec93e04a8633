"""The service's public contract in one place: its identity on the wire (service id, hook, the card extension's key
and version), the package version, the predictor and outcome ids, every closed vocabulary the extension, the logs
and the metrics speak (enums), and the typed model of the assessment extension (:class:`AssessmentExtension`, which
the README's "The assessment extension" is generated from: ``scripts/update-readme-extension``).

Every module that speaks the contract imports it from here; nothing here imports anything of the service. The
vocabularies the FHIR mappings produce (:class:`Basis`, :class:`SkipReason`, :class:`State`) are defined in
:mod:`fhir_mappings.model`, which stands alone, and are re-exported here.
"""

from __future__ import annotations

from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, with_config
from typing_extensions import TypedDict

from fhir_mappings import Basis, SkipReason, State

__all__ = [
    "EXTENSION_KEY",
    "EXTENSION_VERSION",
    "HOOK",
    "OUTCOME_IDS",
    "PREDICTOR_IDS",
    "SERVICE_ID",
    "VERSION",
    "AgeBasis",
    "AssessmentExtension",
    "Basis",
    "CardType",
    "Decision",
    "EligibilityReason",
    "SkipReason",
    "State",
    "Tier",
]

SERVICE_ID = "nxp2-jdm-risk"
"""The CDS service id (``/cds-services/nxp2-jdm-risk``)."""
HOOK = "patient-view"
"""The one hook the service answers."""
EXTENSION_KEY = "nxp2-cds.assessment"
"""The key of the assessment in every card's ``extension`` (README, "The assessment extension")."""
EXTENSION_VERSION: Final = 1
"""The version of that extension's shape."""

try:
    VERSION = version("nxp2-cds")
    """The package version, from its metadata (pyproject.toml is the one place it is written)."""
except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
    VERSION = "0+unknown"

PREDICTOR_IDS: tuple[str, ...] = (
    "anti_nxp2_positive",
    "jdm_diagnosis",
    "bmi_lt_15",
    "muscle_strength_le_3",
    "edema",
    "skin_ulcer",
    "bulbar_weakness",
    "ild",
    "ana_positive",
    "ro52_positive",
    "cd4_cd8_lt_1_4",
    "ferritin_gt_200",
)
"""Every card's extension lists these predictors, in this order; the knowledge base must define each one."""
OUTCOME_IDS: tuple[str, ...] = ("refractory", "gi_perforation_death")
"""The outcomes the knowledge base must define."""

Tier = Literal["critical", "warning", "info"]
"""A card's indicator, as CDS Hooks names it."""


class EligibilityReason(StrEnum):
    """Why a child is (not) one the evidence applies to: the extension's ``eligibility.reason``."""

    ELIGIBLE = "eligible"
    REQUIRED_PREDICTOR_NOT_PRESENT = "required-predictor-not-present"
    """Anti-NXP2 is not positive (negative or not known)."""
    DIAGNOSIS_NOT_RECORDED = "diagnosis-not-recorded"
    """Anti-NXP2 positive, but no juvenile myositis diagnosis on the problem list: a notice card."""
    AGE_UNKNOWN = "age-unknown"
    """Anti-NXP2 positive with a diagnosis, but no birth date or onset age: a notice card."""
    AGE_OUT_OF_RANGE = "age-out-of-range"
    """18 or older at onset (or at diagnosis, or now)."""


class Decision(StrEnum):
    """What the service did with a chart, and why (the request log's ``decision``, the ``decision`` label of
    ``nxp2_cds_assessments_total``)."""

    RISK_CARDS = "risk-cards"
    ALL_PREDICTORS_ABSENT = "all-predictors-absent"
    SCREENING = "screening"
    NOTICE_DIAGNOSIS_NOT_RECORDED = "notice-diagnosis-not-recorded"
    NOTICE_AGE_UNKNOWN = "notice-age-unknown"
    ANTI_NXP2_NEGATIVE = "anti-nxp2-negative"
    ANTI_NXP2_NOT_ASSESSED_NO_DIAGNOSIS = "anti-nxp2-not-assessed-no-diagnosis"
    AGE_OUT_OF_RANGE = "age-out-of-range"


class AgeBasis(StrEnum):
    """Which age eligibility used: the extension's ``eligibility.ageBasis``."""

    ONSET = "onset"
    """At onset: the diagnosis Condition's onset date or onset age."""
    DIAGNOSIS = "diagnosis"
    """At diagnosis: the diagnosis Condition's recorded date."""
    NOW = "now"
    """Today's age: the Condition says neither."""


class CardType(StrEnum):
    """The extension's ``cardType``."""

    RISK = "risk"
    """One outcome's risk card."""
    SCREENING = "screening"
    """JDM recorded, anti-NXP2 not known: test for it."""
    NOTICE = "notice"
    """Anti-NXP2 positive, but the diagnosis or the age is missing: record it."""


# -- the assessment extension (every card's extension["nxp2-cds.assessment"]) ------------------------------------
# TypedDicts: the cards build plain dicts (no cost on the hot path) that mypy checks against this shape; the
# descriptions are pydantic Field metadata, so a TypeAdapter gives the JSON Schema and the README's tables.

_CLOSED = ConfigDict(extra="forbid")


def _skip_reason(key: str) -> str:
    return SkipReason(key).value  # ValueError (a validation error) for a key outside the vocabulary


SkipReasonKey = Annotated[
    str,
    AfterValidator(_skip_reason),
    WithJsonSchema({"type": "string", "title": "SkipReason", "enum": [m.value for m in SkipReason]}),
]
"""A :class:`SkipReason` as a JSON object key: a plain ``str`` (JSON encoders take no enum keys), validated and
documented as the vocabulary."""


@with_config(_CLOSED)
class KnowledgeBaseRef(TypedDict):
    """The knowledge base that made the card."""

    id: Annotated[str, Field(description="The knowledge base's id (`wang-2020-anti-nxp2-jdm`).")]
    version: Annotated[str, Field(description="Its version.")]
    language: Annotated[str, Field(description="The language the card is written in (`en`, `zh-CN`).")]


@with_config(_CLOSED)
class EligibilityJson(TypedDict):
    """Whether the evidence applies to this child, and by which age."""

    eligible: Annotated[bool, Field(description="The child is one the cohort's evidence applies to.")]
    reason: Annotated[EligibilityReason, Field(description="Why (not).")]
    ageYears: Annotated[int | None, Field(description="Completed years today; null without a birth date.")]
    ageAtEligibility: Annotated[int | None, Field(description="The age eligibility used, in completed years.")]
    ageBasis: Annotated[AgeBasis | None, Field(description="Which age that is.")]


@with_config(_CLOSED)
class ProvenanceJson(TypedDict):
    """One datum a predictor rests on, as recorded and as normalised."""

    reference: Annotated[str, Field(description="`ResourceType/id` (or the Bundle entry's `fullUrl`).")]
    resourceType: Annotated[str, Field(description="`Observation`, `Condition` or `Patient`.")]
    valueSet: Annotated[str, Field(description="The value set (concept) the resource matched.")]
    code: Annotated[str | None, Field(description="The record's own name for the code, else the value set's title.")]
    effective: Annotated[str | None, Field(description="Its effective (onset, recorded) date, as recorded.")]
    value: Annotated[str | None, Field(description="The value as recorded, as text (`500 pmol/L`, `1:160`).")]
    unit: Annotated[str | None, Field(description="The unit as recorded.")]
    normalisedValue: Annotated[float | None, Field(description="The value in the rule's unit.")]
    normalisedUnit: Annotated[str | None, Field(description="That unit.")]


@with_config(_CLOSED)
class PredictorJson(TypedDict):
    """One predictor's finding."""

    id: Annotated[str, Field(description="The predictor id (`ferritin_gt_200`, …).")]
    state: Annotated[State, Field(description="Unknown is never absent.")]
    value: Annotated[
        float | str | bool | None,
        Field(description="The deciding value: a number in `unit`, the text of a qualitative result, or a boolean."),
    ]
    unit: Annotated[str | None, Field(description="The unit of a numeric value.")]
    effective: Annotated[str | None, Field(description="The deciding datum's date, as recorded.")]
    sources: Annotated[list[str], Field(description="The references of `provenance`.")]
    basis: Annotated[Basis, Field(description="Why the state is what it is.")]
    drivesTier: Annotated[bool, Field(description="The predictor is one of this card's `drivers`.")]
    provenance: Annotated[list[ProvenanceJson], Field(description="Every datum it rests on.")]


@with_config(_CLOSED)
class CountsJson(TypedDict):
    """What the chart held: `resourcesSeen = resourcesUsed + Σ skipped + malformed items`."""

    resourcesSeen: Annotated[int, Field(description="Resources (and non-resources) in the prefetch or fetched.")]
    resourcesUsed: Annotated[int, Field(description="Resources a finding rests on.")]
    skipped: Annotated[dict[SkipReasonKey, int], Field(description="Resources not used, counted by reason.")]


@with_config(_CLOSED)
class AssessmentExtension(TypedDict):
    """Every card's `extension["nxp2-cds.assessment"]`, for EHR analytics and integration teams."""

    version: Annotated[Literal[1], Field(description="The shape's version: it changes only compatibly.")]
    cardType: Annotated[CardType, Field(description="Which kind of card this is.")]
    outcome: Annotated[
        str | None, Field(description="`refractory` or `gi_perforation_death` for a risk card, else null.")
    ]
    tier: Annotated[Tier, Field(description="The card's indicator.")]
    knowledgeBase: KnowledgeBaseRef
    evaluatedAt: Annotated[str, Field(description="When the chart was assessed (UTC, ISO 8601, `Z`).")]
    eligibility: EligibilityJson
    drivers: Annotated[list[str], Field(description="The outcome's tier-driving predictors.")]
    predictors: Annotated[
        list[PredictorJson], Field(description="All twelve predictors, always in the order of `PREDICTOR_IDS`.")
    ]
    counts: CountsJson
