"""The evidence knowledge base (``config/knowledge.toml``): loaded once, validated, typed.

It holds the paper's 2x2 counts and published estimates, the paper's known defects, the predictor rules
(value sets, thresholds, look-back windows), the eligibility and tier rules, and every word a card says.
A file that does not validate stops start-up with :class:`KnowledgeError`, whose message names the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cds_service.contracts import OUTCOME_IDS, PREDICTOR_IDS, AgeBasis, Tier
from cds_service.resources import config_path
from fhir_mappings import Basis, DataRules, MappingRules, PredictorRule, Terminology

_PUBLISHED = re.compile(r"^(?:[<>]\s*)?(?:\d+(?:\.\d*)?|\.\d+)$")


class KnowledgeError(ValueError):
    """The knowledge base cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceInfo(_Model):
    id: str
    version: str
    label: str
    citation: str
    doi: str
    url: str
    license: str
    cohort: str
    method: str
    caveat: str
    caveat_short: str = ""
    """One line for the cards; the full caveat is on the evidence page."""


class Eligibility(_Model):
    requires_present: tuple[str, ...] = Field(min_length=1)
    diagnosis: str | None = None
    """The required predictor whose Condition says when the disease began (age at onset); without it recorded,
    an otherwise eligible child gets the "diagnosis-not-recorded" notice instead of risk cards."""
    max_age_years: int = Field(gt=0)
    screening_requires_present: tuple[str, ...] = ()
    screening_requires_unknown: tuple[str, ...] = ()


class OrderSpec(_Model):
    """What a suggestion orders when the predictor is not assessed."""

    text: str
    system: str | None = None
    code: str | None = None
    display: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _code_needs_system(self) -> OrderSpec:
        if (self.code is None) != (self.system is None):
            raise ValueError("order.system and order.code go together")
        return self


class Predictor(_Model):
    label: str
    short: str
    act: str | None = None
    """The predictor as an action's object in a summary ("assess **edema**", "order **CD4/CD8**")."""
    test: str
    caveat: str | None = None
    pair_label: str | None = None
    """What is paired to compute the value ("CD4 and CD8"), for "… not measured together"."""
    rule: PredictorRule
    order: OrderSpec | None = None


class GroupCount(_Model):
    label: str
    events: int = Field(ge=0)
    n: int = Field(gt=0)

    @model_validator(mode="after")
    def _events_within_group(self) -> GroupCount:
        if self.events > self.n:
            raise ValueError(f"events ({self.events}) exceed the group size ({self.n})")
        return self

    @property
    def rate(self) -> float:
        return self.events / self.n


class Published(_Model):
    """Estimates exactly as printed (strings keep the precision and the caps ``>999.999`` / ``<.0001``)."""

    beta: str
    odds_ratio: str
    ci_low: str
    ci_high: str
    p: str

    @field_validator("beta", "odds_ratio", "ci_low", "ci_high", "p")
    @classmethod
    def _printed_number(cls, value: str) -> str:
        if not _PUBLISHED.match(value.strip()):
            raise ValueError(f"{value!r} is not a printed number (like 0.0041, >999.999 or <.0001)")
        return value.strip()


class PublishedRatio(_Model):
    reference: str
    exposed: str


class Row(_Model):
    """One row of the paper's table: a 2x2 table (reference vs exposed group) and its estimates."""

    row: str
    label: str
    predictor: str | None = None
    reference: GroupCount
    exposed: GroupCount
    published: Published
    published_ratio: PublishedRatio | None = None
    p_two_sided: str | None = None
    defects: tuple[str, ...] = ()
    note: str | None = None
    top_tier_reason: str | None = None
    """Why this row counts toward a tier rule with ``count = "significant"`` although its two-sided P is not below
    the tier policy's alpha (without a reason, it does not)."""

    @property
    def p_value(self) -> float:
        """The two-sided P as a number (``p_two_sided`` where a cell is zero, else the published P; ``<.0001`` is
        read as 0.0001)."""
        printed = (self.p_two_sided or self.published.p).lstrip("<> ")
        return float(printed)

    @property
    def zero_cell(self) -> bool:
        cells = (
            self.reference.events,
            self.reference.n - self.reference.events,
            self.exposed.events,
            self.exposed.n - self.exposed.events,
        )
        return 0 in cells

    @property
    def n(self) -> int:
        return self.reference.n + self.exposed.n


class TierRule(_Model):
    tier: Tier
    min_present: int = Field(default=0, ge=0)
    min_unknown: int = Field(default=0, ge=0)
    count: Literal["all", "significant"] = "all"
    """``significant``: ``min_present`` counts only drivers significant two-sided (see :class:`TierPolicy`)."""


class TierPolicy(_Model):
    alpha: float = Field(default=0.05, gt=0, lt=1)


class Outcome(_Model):
    label: str
    short: str
    table: str
    definition: str
    events: int = Field(ge=0)
    n: int = Field(gt=0)
    drivers: tuple[str, ...] = Field(min_length=1)
    tiers: tuple[TierRule, ...] = Field(min_length=1)
    tier_rationale: str = ""
    """Why the tier rules are what they are (shown on the evidence page)."""
    rows: tuple[Row, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Outcome:
        names = [r.row for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError("rows: row ids must be unique")
        if len(set(self.drivers)) != len(self.drivers):
            raise ValueError("drivers must be unique")
        with_rows = {r.predictor for r in self.rows if r.predictor}
        missing = [d for d in self.drivers if d not in with_rows]
        if missing:
            raise ValueError(f"drivers without a row: {missing}")
        return self

    def row_for(self, predictor_id: str) -> Row | None:
        return next((r for r in self.rows if r.predictor == predictor_id), None)

    def significant_drivers(self, alpha: float) -> tuple[str, ...]:
        """Drivers whose two-sided P is below ``alpha``, or whose row says why they count anyway."""
        out = []
        for driver in self.drivers:
            row = self.row_for(driver)
            if row is not None and (row.p_value < alpha or row.top_tier_reason):
                out.append(driver)
        return tuple(out)


class Defect(_Model):
    title: str
    text: str


class OutcomeWording(_Model):
    intro: str
    critical: str | None = None
    warning: str | None = None
    info: str | None = None

    def summary(self, tier: str) -> str | None:
        value: str | None = getattr(self, tier)
        return value


class ScreeningWording(_Model):
    summary: str = Field(max_length=139)
    summary_pending: str = Field(max_length=139)
    detail: str


class NoticeWording(_Model):
    """An info card that says why the risk cards do not apply (yet)."""

    summary: str = Field(max_length=139)
    detail: str


NOTICE_IDS = ("diagnosis-not-recorded", "age-unknown")


class OverrideReason(_Model):
    code: str
    display: str


class ServiceWording(_Model):
    """What discovery says about the service."""

    title: str
    description: str
    usage_requirements: str


class EvidencePageWording(_Model):
    """Every word of the evidence page (``/evidence``)."""

    title: str
    heading: str
    knowledge_base: str
    read_first: str
    cohort_heading: str
    verification: str
    rules_heading: str
    outcome_counts: str
    drivers: str
    tiers: str
    why_tiers: str
    tier_rule_present: str
    tier_rule_significant: str
    tier_rule_unknown: str
    tier_rule_always: str
    tier_rule_and: str
    tier_no_card: str
    forest_caption: str
    table_headers: tuple[str, str, str, str, str, str, str]
    sets_tier: str
    one_sided: str
    reproduced_yes: str
    reproduced_no: str
    defects_heading: str
    bmi_note: str
    footer: str
    languages: str
    tier_line: str
    tier_separator: str
    confidence_interval: str
    plot_title: str
    axis_label: str
    mark_title: str


class Wording(_Model):
    language_name: str
    indicator_labels: dict[Tier, str]
    state_labels: dict[Literal["present", "absent", "unknown"], str]
    override_reason_system: str
    evidence_heading: str
    evidence_link: str
    table_headers: tuple[str, str, str, str]
    rates: str
    odds: str
    state_value: str
    value_date: str
    one_sided_footnote: str
    list_separator: str
    item_separator: str
    more: str
    heading_line: str
    status_line: str
    link_label: str
    action_separator: str
    action_assess: str
    action_order: str
    action_review: str
    action_none: str
    suggestion_label: str
    suggestion_reason: str
    outcome_joiner: str
    suggestion_reason_eligibility: str
    lookback_text: str
    lookback_unlimited_text: str
    produced_by: str
    bmi_for_age: str
    bmi_for_age_missing: str
    bmi_for_age_reasons: dict[str, str]
    growth_references: dict[str, str]
    evidence_page: EvidencePageWording
    basis_heading: str
    basis_antibody: str
    basis_diagnosis: str
    basis_missing: str
    undated: str
    basis_age: dict[AgeBasis, str]
    gap_hours: str
    gap_days: str
    examine_heading: str
    reading_rules: tuple[str, ...] = ()
    """The rules by which the chart is read, in words (the evidence page lists them)."""
    basis: dict[str, str]
    outcomes: dict[str, OutcomeWording]
    screening: ScreeningWording
    notices: dict[str, NoticeWording]
    override_reasons: tuple[OverrideReason, ...] = Field(min_length=1)
    service: ServiceWording


BASIS_CODES: tuple[str, ...] = tuple(Basis)
"""Every basis a finding can have (:class:`fhir_mappings.Basis`): the knowledge base words each one."""


class KnowledgeBase(_Model):
    schema_version: Literal[1]
    source: SourceInfo
    eligibility: Eligibility
    data_rules: DataRules
    tier_policy: TierPolicy = TierPolicy()
    predictors: dict[str, Predictor]
    outcomes: dict[str, Outcome]
    defects: dict[str, Defect]
    wording: Wording

    @model_validator(mode="after")
    def _references_resolve(self) -> KnowledgeBase:
        missing = [p for p in PREDICTOR_IDS if p not in self.predictors]
        if missing:
            raise ValueError(f"predictors: the contract's predictor ids are missing: {missing}")
        missing_outcomes = [o for o in OUTCOME_IDS if o not in self.outcomes]
        if missing_outcomes:
            raise ValueError(f"outcomes: the contract's outcome ids are missing: {missing_outcomes}")
        known = set(self.predictors)
        diagnosis = self.eligibility.diagnosis
        if diagnosis is not None and diagnosis not in self.eligibility.requires_present:
            raise ValueError("eligibility.diagnosis must be one of eligibility.requires_present")
        missing_notices = [n for n in NOTICE_IDS if n not in self.wording.notices]
        if missing_notices:
            raise ValueError(f"wording.notices: missing {missing_notices}")
        named = (
            list(self.eligibility.requires_present)
            + list(self.eligibility.screening_requires_present)
            + list(self.eligibility.screening_requires_unknown)
        )
        for outcome_id, outcome in self.outcomes.items():
            named += list(outcome.drivers)
            named += [r.predictor for r in outcome.rows if r.predictor]
            for row in outcome.rows:
                unknown_defects = [d for d in row.defects if d not in self.defects]
                if unknown_defects:
                    raise ValueError(f"outcomes.{outcome_id}.rows.{row.row}: unknown defects {unknown_defects}")
            wording = self.wording.outcomes.get(outcome_id)
            if wording is None:
                raise ValueError(f"wording.outcomes.{outcome_id} is missing")
            for rule in outcome.tiers:
                if wording.summary(rule.tier) is None:
                    raise ValueError(f"wording.outcomes.{outcome_id}.{rule.tier}: summary template missing")
        unknown = sorted({p for p in named if p not in known})
        if unknown:
            raise ValueError(f"unknown predictor ids referenced: {unknown}")
        missing_basis = [b for b in BASIS_CODES if b not in self.wording.basis]
        if missing_basis:
            raise ValueError(f"wording.basis: missing {missing_basis}")
        missing_ages = [a.value for a in AgeBasis if a not in self.wording.basis_age]
        if missing_ages:
            raise ValueError(f"wording.basis_age: missing {missing_ages}")
        return self

    # -- derived views -------------------------------------------------------------------------------
    def mapping_rules(self) -> MappingRules:
        return MappingRules(predictors={pid: p.rule for pid, p in self.predictors.items()}, data=self.data_rules)

    def local_code_targets(self, local_codes: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """``[mappings.local_codes]`` keys are predictor ids (their first value set) or value set ids."""
        out: dict[str, list[str]] = {}
        for key, tokens in local_codes.items():
            target = self.predictors[key].rule.valuesets[0] if key in self.predictors else key
            out.setdefault(target, []).extend(tokens)
        return out

    def check_terminology(self, terminology: Terminology) -> None:
        """Every value set a rule names must exist."""
        for pid, predictor in self.predictors.items():
            missing = [c for c in predictor.rule.concepts() if c not in terminology.concepts]
            if missing:
                raise KnowledgeError(f"predictors.{pid}.rule: unknown value sets {missing}")

    def outcome_ids_driven_by(self, predictor_id: str) -> tuple[str, ...]:
        return tuple(oid for oid, o in self.outcomes.items() if predictor_id in o.drivers)


def default_knowledge_file() -> Path:
    return config_path("knowledge.toml")


def _format_errors(path: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"{path}: {where}: {error['msg']}")
    return "\n".join(lines)


def parse_knowledge(data: Mapping[str, Any], *, origin: Path) -> KnowledgeBase:
    try:
        return KnowledgeBase.model_validate(data)
    except ValidationError as exc:
        raise KnowledgeError(_format_errors(origin, exc)) from exc


def load_knowledge(path: Path | None = None) -> KnowledgeBase:
    """Read and validate a knowledge base TOML file (default: the shipped ``config/knowledge.toml``)."""
    target = path or default_knowledge_file()
    try:
        data = tomllib.loads(target.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KnowledgeError(f"{target}: cannot be read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeError(f"{target}: not valid TOML: {exc}") from exc
    return parse_knowledge(data, origin=target)
