"""What every pass shares: the reader's fixed set-up (:class:`Setup`), the state of one chart being read
(:class:`Run`), and the values that pass between the passes (:class:`Item`, :class:`Reading`, :class:`Option`).

A :class:`Run` is written by screening (what is there), read by the windows and decisions, and marked by the value
readers (what was used, what was skipped and why). Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..model import Basis, SkipReason, Source
from ..pruned import PrunedResources
from ..rules import MappingRules
from ..terminology import Terminology, codeable_texts
from ..units import UnitConverter
from ..validation import ResourceValidator
from ..values import AnswerSets
from .written import quantity_of, value_text

Json = dict[str, Any]

EPOCH = datetime.min.replace(tzinfo=UTC)
"""Sorts undated items last (newest first) or first (oldest first)."""

# How a Condition reads on a problem list (Item.status).
ACTIVE = "active"
SUSPECTED = "suspected"
INACTIVE = "inactive"
REFUTED = "refuted"


@dataclass(slots=True)
class Item:
    """A resource (or one of its components) that matched a concept some predictor uses."""

    resource: Json
    part: Json
    """Where code and value are: the resource itself or a component."""
    reference: str
    rtype: str
    when: datetime | None
    when_raw: str | None
    concept: str
    as_value: bool = False
    """The concept matched the value (a finding coded as ``valueCodeableConcept``), not the code."""
    status: str = ACTIVE
    """Conditions: active, suspected, inactive (resolved / remission / abated) or refuted."""
    specimen: str | None = None


@dataclass(slots=True)
class Reading:
    """What one option (a result, or a computed pair) says."""

    decisive: bool | None
    """``True``: the predictor is met; ``False``: not met; ``None``: the value leaves it open (equivocal)."""
    value: float | str | bool | None
    unit: str | None
    items: tuple[Item, ...]
    sources: tuple[Source, ...]
    basis: Basis = Basis.REPORTED
    severity: float = 0.0
    """Among results that meet the predictor at the same time, the highest severity is shown."""


@dataclass(slots=True)
class Option:
    """A lazily read way of deciding a predictor: one result, or a pair to compute from."""

    when: datetime | None
    when_raw: str | None
    read: Callable[[], Reading | None]
    items: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything about the rules that does not change between patients (the :class:`~.reader.Reader` holds one)."""

    terminology: Terminology
    rules: MappingRules
    answers: AnswerSets
    units: UnitConverter
    validator: ResourceValidator
    wanted: frozenset[str]
    """Every concept some predictor reads."""
    finding_concepts: frozenset[str]
    """The concepts of clinical findings (read from Conditions, and from finding Observations' values)."""
    pattern_concepts: tuple[str, ...]
    """The wanted concepts that a name (text pattern) can match as well as a code."""


@dataclass(slots=True)
class Run:
    """One chart being read for one patient at one evaluation time."""

    setup: Setup
    patient_id: str
    at: datetime
    originals: PrunedResources | None = None
    """Where the resources were pruned (:mod:`fhir_mappings.pruned`): their original JSON."""
    whole: dict[int, Json] = field(default_factory=dict)
    """Originals parsed so far, by ``id`` of the pruned resource."""
    code_concepts: dict[int, tuple[frozenset[str], bool]] = field(default_factory=dict)
    """Wanted concepts of a code by ``id`` of the code: pruned resources share equal codes
    (:mod:`fhir_mappings.pruned`), so a chart's thousands of results cost a few hundred look-ups. Nothing changes a
    resource while it is read."""
    aliases: set[str] = field(default_factory=set)
    """References that name this patient (``Patient/id``, and the Patient entry's ``fullUrl``)."""
    items: dict[str, list[Item]] = field(default_factory=dict)
    """Countable candidates per concept."""
    pending: dict[str, list[Item]] = field(default_factory=dict)
    """Preliminary / registered results per concept: never counted, but the card says they are pending."""
    patient_found: bool = False
    reasons: dict[int, SkipReason] = field(default_factory=dict)
    """Why each resource (by ``id``) was skipped: the first reason given wins."""
    used: set[int] = field(default_factory=set)
    candidates: dict[int, Json] = field(default_factory=dict)
    valid_cache: dict[int, bool] = field(default_factory=dict)
    seen: int = 0
    malformed: int = 0
    birth_date_raw: object = None
    sex: str | None = None
    """``Patient.gender`` when ``male`` or ``female``; ``other``, ``unknown`` or none is ``None``."""

    def skip(self, resource: Json, reason: SkipReason) -> None:
        self.reasons.setdefault(id(resource), reason)

    def use(self, reading: Reading) -> None:
        for item in reading.items:
            self.used.add(id(item.resource))

    def full(self, resource: Json) -> Json:
        """``resource`` as the client sent it: a pruned resource's original JSON (parsed once), else itself."""
        originals = self.originals
        if originals is None:
            return resource
        key = id(resource)
        found = self.whole.get(key)
        if found is None:
            found = self.whole[key] = originals.original(resource)
        return found

    def full_part(self, item: Item) -> Json:
        """The item's part (the resource or one of its components) in the resource as the client sent it."""
        whole = self.full(item.resource)
        if whole is item.resource:
            return item.part
        if item.part is item.resource:
            return whole
        components = item.resource.get("component")
        index = next(i for i, c in enumerate(components) if c is item.part) if isinstance(components, list) else -1
        return whole["component"][index]  # type: ignore[no-any-return]

    def valid(self, resource: Json) -> bool:
        """Whether ``resource`` is valid FHIR R4: always judged on the JSON the client sent."""
        key = id(resource)
        cached = self.valid_cache.get(key)
        if cached is None:
            problem = self.setup.validator.problem(self.full(resource))
            if problem is not None:
                self.skip(resource, problem)
            cached = problem is None
            self.valid_cache[key] = cached
        return cached

    def source(
        self,
        item: Item,
        normalised: float | None,
        normalised_unit: str | None,
        shown: str | None = None,
    ) -> Source:
        """The provenance of ``item``: reference, date, the record's own name, the value as written (or
        ``shown``), its unit, and the normalised value."""
        part = item.part
        code = part.get("code") if not item.as_value else part.get("valueCodeableConcept")
        texts = codeable_texts(code)
        unit = None
        quantity = part.get("valueQuantity") if not item.as_value else None
        if quantity is None and isinstance(part.get("valueString"), str):
            quantity = quantity_of(part)
        if isinstance(quantity, dict):
            recorded_unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else quantity.get("code")
            unit = recorded_unit if isinstance(recorded_unit, str) else None
        return Source(
            reference=item.reference,
            resource_type=item.rtype,
            effective=item.when_raw,
            concept=item.concept,
            code_display=texts[0] if texts else self.setup.terminology.concepts[item.concept].title,
            value=shown if shown is not None else value_text(part),
            unit=unit,
            normalised_value=normalised,
            normalised_unit=normalised_unit,
            code_text=texts[0] if texts else None,
        )


def newest_first(item: Item) -> tuple[int, float]:
    """Sort key: dated items newest first, undated last."""
    return (0, -item.when.timestamp()) if item.when is not None else (1, 0.0)
