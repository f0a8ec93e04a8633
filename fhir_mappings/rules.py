"""How each predictor is read from FHIR data: the typed rules the knowledge base supplies.

The rules carry no codes (those are in the value sets) and no Python knows their numbers: thresholds, look-back
windows, titer cutoffs and unit aliases all come from ``config/knowledge.toml``. A rule's ``kind`` picks the
algorithm in :mod:`fhir_mappings.extract`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Operator = Literal["<", "<=", ">", ">="]
Conflict = Literal["present", "unknown"]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    valuesets: tuple[str, ...] = Field(min_length=1)
    """Value sets (concept ids) whose Observations / Conditions record this predictor."""
    lookback_days: int | None = Field(default=None, gt=0)
    """Only data this many days before the evaluation time counts; ``None`` = no limit."""

    def concepts(self) -> tuple[str, ...]:
        return self.valuesets


class _Threshold(BaseModel):
    operator: Operator
    threshold: float
    unit: str
    """The UCUM unit the threshold is in; values are converted to it."""
    plausible_min: float | None = None
    plausible_max: float | None = None
    """A value outside ``[plausible_min, plausible_max]`` (in ``unit``, after conversion) is a likely unit or entry
    error (ferritin 300 "ug/mL" = 300,000 ng/mL): it is flagged on the card and never used."""


class MolarConversion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: str
    """A molar UCUM unit, e.g. ``pmol/L``."""
    per_unit: float = Field(gt=0)
    """How many of ``unit`` make one of the threshold's unit (ferritin: 1 ng/mL = 2.247 pmol/L)."""
    source: str = ""


class AntibodyRule(_Rule):
    """Qualitative antibody result: interpretation, coded answer, text, titer, or quantity vs reference range."""

    kind: Literal["antibody"]
    titer_valuesets: tuple[str, ...] = ()
    titer_cutoff: float | None = Field(default=None, gt=0)
    """Dilution at and above which a titer is positive (80 means 1:80 is positive)."""
    on_conflict: Conflict = "present"
    """Results of the same date that disagree: ``unknown`` ("conflicting results", the serologist's reading) or
    ``present``."""

    def concepts(self) -> tuple[str, ...]:
        return self.valuesets + self.titer_valuesets

    @model_validator(mode="after")
    def _titer_needs_cutoff(self) -> AntibodyRule:
        if self.titer_valuesets and self.titer_cutoff is None:
            raise ValueError("titer_valuesets need a titer_cutoff")
        return self


class QuantityRule(_Rule, _Threshold):
    """A measured quantity against a threshold (serum ferritin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["quantity"]
    molar: MolarConversion | None = None


class RatioRule(_Rule, _Threshold):
    """A ratio reported directly, or computed from numerator / denominator results taken together (CD4/CD8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["ratio"]
    pairs: tuple[tuple[str, str], ...] = ()
    """``(numerator value set, denominator value set)`` pairs."""
    pair_max_gap_minutes: int = Field(default=1440, ge=0)
    """Numerator and denominator from the same specimen always pair; otherwise within this many minutes (the
    same draw)."""

    def concepts(self) -> tuple[str, ...]:
        return self.valuesets + tuple(c for pair in self.pairs for c in pair)


class BmiRule(_Rule, _Threshold):
    """Body mass index reported directly, or computed from a weight and a height measured close together."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["bmi"]
    weight_valuesets: tuple[str, ...] = Field(min_length=1)
    height_valuesets: tuple[str, ...] = Field(min_length=1)
    weight_unit: str = "kg"
    height_unit: str = "m"
    pair_max_gap_days: int = Field(default=30, ge=0)

    def concepts(self) -> tuple[str, ...]:
        return self.valuesets + self.weight_valuesets + self.height_valuesets


class GradeRule(_Rule):
    """A graded examination (MRC muscle strength 0-5); the weakest grade at the latest time counts."""

    kind: Literal["grade"]
    operator: Operator
    threshold: float
    scale_max: float = 5.0


class FindingRule(_Rule):
    """A clinical finding, read as a clinician reads a problem list: an active confirmed Condition or a positive
    finding Observation is present; a refuted, resolved, inactive or abated Condition or a negative finding
    Observation is absent; an unconfirmed Condition is suspected (unknown); no record either way is unknown
    ("not recorded"), never absent. ``lookback_days`` applies to finding Observations: a Condition's clinical
    status is its current state."""

    kind: Literal["finding"]
    observations: bool = True
    history_counts: bool = False
    """A confirmed Condition that is inactive, in remission or resolved still counts as present (a recorded
    diagnosis, such as juvenile dermatomyositis in remission)."""


PredictorRule = Annotated[
    AntibodyRule | QuantityRule | RatioRule | BmiRule | GradeRule | FindingRule,
    Field(discriminator="kind"),
]


class DataRules(BaseModel):
    """Which data counts at all, and how free-text units map to UCUM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observation_statuses: frozenset[str] = frozenset({"final", "amended", "corrected"})
    observation_pending_statuses: frozenset[str] = frozenset({"preliminary", "registered"})
    """Never counted; the card says the result is pending instead of "no result"."""
    condition_clinical_statuses: frozenset[str] = frozenset({"active", "recurrence", "relapse"})
    condition_inactive_statuses: frozenset[str] = frozenset({"inactive", "remission", "resolved"})
    """Recorded absent (so is a Condition with an abatement)."""
    condition_excluded_verification: frozenset[str] = frozenset({"entered-in-error"})
    """No record at all. (So is a Condition with no clinical status.)"""
    condition_refuted_verification: frozenset[str] = frozenset({"refuted"})
    """Recorded absent."""
    condition_suspected_verification: frozenset[str] = frozenset({"unconfirmed", "provisional", "differential"})
    """Not present: shown as suspected (unknown)."""
    future_tolerance_hours: float = Field(default=24.0, ge=0)
    """Data dated later than the evaluation time by more than this is ignored (clock skew allowance)."""
    unit_aliases: dict[str, str] = Field(default_factory=dict)


class MappingRules(BaseModel):
    """Every predictor's rule plus the data rules. ``predictors`` keys are the public predictor ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predictors: dict[str, PredictorRule]
    data: DataRules = DataRules()

    def concepts(self) -> frozenset[str]:
        return frozenset(c for rule in self.predictors.values() for c in rule.concepts())
