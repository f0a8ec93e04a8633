"""How each predictor is read from FHIR data: the typed rules the knowledge base supplies.

The rules carry no codes (those are in the value sets) and no Python knows their numbers: thresholds, look-back
windows, titer cutoffs and unit aliases all come from ``config/knowledge.toml``. A rule's ``kind`` picks the
algorithm in :mod:`fhir_mappings.extract`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Operator = Literal["<", "<=", ">", ">="]


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
    pair_max_gap_minutes: int = Field(default=60, ge=0)

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
    """A clinical finding: an active Condition, or a finding Observation (boolean, coded present/absent, or the
    finding's code as the value). With no such data the finding is absent, never unknown."""

    kind: Literal["finding"]
    observations: bool = True


PredictorRule = Annotated[
    AntibodyRule | QuantityRule | RatioRule | BmiRule | GradeRule | FindingRule,
    Field(discriminator="kind"),
]


class DataRules(BaseModel):
    """Which data counts at all, and how free-text units map to UCUM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observation_statuses: frozenset[str] = frozenset({"final", "amended", "corrected"})
    condition_clinical_statuses: frozenset[str] = frozenset({"active", "recurrence", "relapse"})
    condition_excluded_verification: frozenset[str] = frozenset({"refuted", "entered-in-error"})
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
