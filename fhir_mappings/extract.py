"""FHIR R4 resources → :class:`PatientFindings`: every predictor present, absent or unknown, with provenance.

The hot path works on plain JSON: one pass over the resources keeps only those for this patient whose code
(or component code, or text) belongs to a value set some predictor uses; everything else is counted and
dropped. Candidates are then read newest first, and only the ones actually read are validated with
fhir.resources (``fhir.resources.R4B``), so the cost of validation grows with the number of predictors, not
with the size of the chart. A resource that fails R4 validation is skipped with a reason, never fatal.

Rules of the domain (see DESIGN.md):

- Observations count with status final / amended / corrected; a preliminary or registered result never counts
  and makes the predictor "pending", not "no result".
- Conditions are read as a clinician reads a problem list: confirmed (or unstated verification) and active /
  recurrence / relapse is present; unconfirmed / provisional / differential is suspected (unknown); refuted,
  inactive, remission, resolved or abated is recorded absent; entered-in-error or no clinical status is no record.
- Resources whose subject is another patient are ignored.
- An antibody is read only from evidence specific to it: its code, its component of a panel, or a result whose
  own name names it. A multi-antibody panel's panel-level value or interpretation never decides it.
- The latest valid value inside a predictor's look-back window wins; results at the same time that disagree are
  resolved towards the predictor being present (the card shows every source), except for rules that say
  ``on_conflict = "unknown"`` (anti-NXP2): results of the same date that disagree are "conflicting", unknown.
- A value outside the rule's plausible range after unit conversion is flagged ("implausible"), never used.
- No valid value in the window is unknown, with the honest reason: no result, pending, equivocal, conflicting,
  unreadable (with the value as written), not paired (with the gap), or older than the look-back. For clinical
  findings, no record either way is unknown ("not recorded"), never absent.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any

from .dates import (
    completed_years,
    condition_effective,
    days_before,
    observation_effective,
    parse_fhir_date,
    parse_fhir_datetime,
    shifted,
)
from .model import PatientFindings, PredictorFinding, Source, State
from .pruned import PrunedResources
from .rules import (
    AntibodyRule,
    BmiRule,
    FindingRule,
    GradeRule,
    MappingRules,
    QuantityRule,
    RatioRule,
)
from .terminology import Terminology, codeable_texts
from .units import UnitConverter
from .validation import ResourceValidator
from .values import (
    AnswerSets,
    Verdict,
    as_number,
    bounded,
    meets,
    parse_grade,
    parse_number_text,
    parse_titer,
    quantity_text,
    verdict_of_codeable,
    verdict_of_interpretation,
    verdict_of_text,
)

Json = dict[str, Any]

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_REF_RANGE_TEXT = re.compile(
    r"^\D{0,24}?(<=|<|≤|＜)\s*(\d+(?:\.\d+)?)"  # "<11", "≤20 U/mL", "阴性 <11", "Negative: <20"
    r"|^\s*0(?:\.0+)?\s*[-–~～]\s*(\d+(?:\.\d+)?)"  # "0-10", "0~10"
    r"|(?i:cut-?\s*off|临界值|界值)\D{0,6}?(\d+(?:\.\d+)?)"  # "cut-off 20", "临界值 20"
)
_MAX_REFERENCE_TEXT = 200
"""Longer reference-range or ratio texts are notes: not searched for numbers (bounded regex work)."""
_MAX_BUNDLE_DEPTH = 4

_EPOCH = datetime.min.replace(tzinfo=UTC)

# Basis codes: why a finding has its state. Cards turn them into words (config/knowledge.toml [wording.basis]).
BASIS_REPORTED = "reported"
BASIS_COMPUTED = "computed"
BASIS_CONDITION = "condition"
BASIS_OBSERVATION = "observation"
BASIS_CONFLICT = "condition-despite-later-observation"
BASIS_HISTORY = "condition-history"
BASIS_RESOLVED = "condition-resolved"
BASIS_REFUTED = "condition-refuted"
BASIS_SUSPECTED = "suspected"
BASIS_NOT_RECORDED = "not-recorded"
BASIS_EQUIVOCAL = "equivocal"
BASIS_CONFLICTING = "conflicting"
BASIS_PENDING = "pending"
BASIS_IMPLAUSIBLE = "implausible"
BASIS_UNPAIRED = "unpaired"
BASIS_STALE = "outside-lookback"
BASIS_NO_DATA = "no-data"
BASIS_UNREADABLE = "unreadable"

# How a Condition item reads (``_Item.status``).
_ACTIVE = "active"
_SUSPECTED = "suspected"
_INACTIVE = "inactive"
_REFUTED = "refuted"


_READ_TYPES = frozenset({"Observation", "Condition", "Patient"})


def _modified(resource: Json) -> bool:
    """Whether ``resource`` carries a modifier extension — on itself, or on a component or reference range the
    rules read. FHIR: a modifier extension can change the meaning of everything around it (a result "not done", a
    condition negated), and an application that does not know it SHALL NOT process the resource. This service knows
    none, so such a resource is skipped (``modifier-extension``), never read as if the extension were not there."""
    if resource.get("modifierExtension"):
        return True
    for backbone in ("component", "referenceRange"):
        parts = resource.get(backbone)
        if isinstance(parts, list) and any(isinstance(p, dict) and p.get("modifierExtension") for p in parts):
            return True
    return False


@dataclass(slots=True)
class _Item:
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
    status: str = _ACTIVE
    """Conditions: active, suspected, inactive (resolved / remission / abated) or refuted."""
    specimen: str | None = None


@dataclass(slots=True)
class _Reading:
    """What one option (a result, or a computed pair) says."""

    decisive: bool | None
    """``True``: the predictor is met; ``False``: not met; ``None``: the value leaves it open (equivocal)."""
    value: float | str | bool | None
    unit: str | None
    items: tuple[_Item, ...]
    sources: tuple[Source, ...]
    basis: str = BASIS_REPORTED
    severity: float = 0.0
    """Among results that meet the predictor at the same time, the highest severity is shown."""


@dataclass(slots=True)
class _Option:
    """A lazily read way of deciding a predictor: one result, or a pair to compute from."""

    when: datetime | None
    when_raw: str | None
    read: Callable[[], _Reading | None]
    items: tuple[_Item, ...] = ()


@dataclass
class _Run:
    terminology: Terminology
    rules: MappingRules
    patient_id: str
    at: datetime
    answers: AnswerSets
    units: UnitConverter
    wanted: frozenset[str]
    finding_concepts: frozenset[str]
    pattern_concepts: tuple[str, ...]
    validator: ResourceValidator
    originals: PrunedResources | None = None
    """Where the resources were pruned (:mod:`fhir_mappings.pruned`): their original JSON."""
    whole: dict[int, Json] = field(default_factory=dict)
    """Originals parsed so far, by ``id`` of the pruned resource."""
    code_concepts: dict[int, tuple[frozenset[str], bool]] = field(default_factory=dict)
    """:meth:`_concepts_of` by ``id`` of the code: pruned resources share equal codes (:mod:`fhir_mappings.pruned`),
    so a chart's thousands of results cost a few hundred look-ups. Nothing changes a resource while it is read."""
    aliases: set[str] = field(default_factory=set)
    items: dict[str, list[_Item]] = field(default_factory=dict)
    pending: dict[str, list[_Item]] = field(default_factory=dict)
    """Preliminary / registered results per concept: never counted, but the card says they are pending."""
    patient_found: bool = False
    reasons: dict[int, str] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)
    candidates: dict[int, Json] = field(default_factory=dict)
    valid_cache: dict[int, bool] = field(default_factory=dict)
    seen: int = 0
    malformed: int = 0
    birth_date_raw: object = None
    sex: str | None = None
    """``Patient.gender`` when ``male`` or ``female``; ``other``, ``unknown`` or none is ``None``."""

    # -- bookkeeping ---------------------------------------------------------------------------------
    def skip(self, resource: Json, reason: str) -> None:
        self.reasons.setdefault(id(resource), reason)

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

    def full_part(self, item: _Item) -> Json:
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
            problem = self.validator.problem(self.full(resource))
            if problem is not None:
                self.skip(resource, problem)
            cached = problem is None
            self.valid_cache[key] = cached
        return cached

    # -- pass 1: what is there -------------------------------------------------------------------------
    def collect(self, inputs: Iterable[object]) -> None:
        flat: list[tuple[Json, str | None]] = []
        for resource, full_url in _flatten(inputs):
            if resource is None:
                self.malformed += 1
            else:
                flat.append((resource, full_url))
        self.seen = len(flat) + self.malformed
        self.aliases = {f"Patient/{self.patient_id}"}
        for resource, full_url in flat:
            if resource.get("resourceType") == "Patient" and resource.get("id") == self.patient_id and full_url:
                self.aliases.add(full_url)
        seen_ids: set[tuple[str, str]] = set()
        for resource, full_url in flat:
            rtype = resource.get("resourceType")
            rid = resource.get("id")
            if isinstance(rtype, str) and isinstance(rid, str):
                if (rtype, rid) in seen_ids:
                    self.skip(resource, "duplicate")
                    continue
                seen_ids.add((rtype, rid))
            if rtype in _READ_TYPES and _modified(resource):
                self.skip(resource, "modifier-extension")
                continue
            if rtype == "Observation":
                self._observation(resource, full_url)
            elif rtype == "Condition":
                self._condition(resource, full_url)
            elif rtype == "Patient":
                if rid == self.patient_id:
                    if self.valid(resource):
                        self.patient_found = True
                        self.birth_date_raw = resource.get("birthDate")
                        gender = resource.get("gender")
                        self.sex = gender if gender in ("male", "female") else None
                        self.used.add(id(resource))
                else:
                    self.skip(resource, "other-patient")
            else:
                self.skip(resource, "unrelated")

    def _subject_reason(self, resource: Json) -> str | None:
        subject = resource.get("subject")
        ref = subject.get("reference") if isinstance(subject, dict) else None
        if not isinstance(ref, str):
            return "no-subject"
        if ref in self.aliases:
            return None
        m = _PATIENT_REF.search(ref)
        return None if m is not None and m.group(1) == self.patient_id else "other-patient"

    def _reference(self, resource: Json, full_url: str | None) -> str:
        rid = resource.get("id")
        if isinstance(rid, str):
            return f"{resource['resourceType']}/{rid}"
        return full_url or f"{resource['resourceType']}/(no id)"

    def _text_concepts(self, codeable: object) -> frozenset[str]:
        """Concepts whose text pattern matches ``code.text`` or a ``coding.display``."""
        if not self.pattern_concepts or not isinstance(codeable, dict):
            return frozenset()
        found: frozenset[str] = frozenset()
        for text in codeable_texts(codeable):
            found = found | self.terminology.concepts_for_text(text)
        return found & self.wanted if found else found

    def _concepts_of(self, codeable: object) -> tuple[frozenset[str], bool]:
        """The wanted concepts of a code, and whether they were found by name (text pattern) only."""
        key = id(codeable)
        found = self.code_concepts.get(key)
        if found is None:
            hit = self.terminology.concepts_for_codeable(codeable) & self.wanted
            if hit:
                found = hit, False
            else:
                by_text = self._text_concepts(codeable)
                found = by_text, bool(by_text)
            self.code_concepts[key] = found
        return found

    def _names_a_panel(self, codeable: object) -> bool:
        return any(self.terminology.text_matches(self.answers.panel, t) for t in codeable_texts(codeable))

    def _observation(self, resource: Json, full_url: str | None) -> None:
        reason = self._subject_reason(resource)
        if reason is not None:
            self.skip(resource, reason)
            return
        code = resource.get("code")
        own, by_text = self._concepts_of(code)
        matches: list[tuple[Json, str, bool]] = []
        components = resource.get("component")
        component_concepts: set[str] = set()
        if isinstance(components, list):
            for component in components:
                if isinstance(component, dict):
                    hit, _ = self._concepts_of(component.get("code"))
                    component_concepts |= hit
                    matches.extend((component, c, False) for c in hit)
        if own:
            # A panel's own value or interpretation is not specific to one antibody: only its component is.
            panel = by_text and ("hasMember" in resource or bool(components) or self._names_a_panel(code))
            specific = frozenset() if panel else own - component_concepts
            matches[:0] = [(resource, c, False) for c in specific]
            if not matches and panel:
                self.skip(resource, "panel-level-result")
                return
        value_cc = resource.get("valueCodeableConcept")
        if value_cc is not None and self.finding_concepts:
            hit = self.terminology.concepts_for_codeable(value_cc) & self.finding_concepts
            matches.extend((resource, c, True) for c in hit)
        if not matches:
            self.skip(resource, "unrelated")
            return
        status = resource.get("status")
        if status not in self.rules.data.observation_statuses:
            self.skip(resource, f"observation-status-{status if isinstance(status, str) else 'missing'}")
            if status in self.rules.data.observation_pending_statuses:
                when, raw = observation_effective(resource)
                reference = self._reference(resource, full_url)
                for part, concept, as_value in matches:
                    self.pending.setdefault(concept, []).append(
                        _Item(resource, part, reference, "Observation", when, raw, concept, as_value)
                    )
            return
        when, raw = observation_effective(resource)
        if not self._admit_date(resource, when, raw):
            return
        reference = self._reference(resource, full_url)
        specimen = resource.get("specimen")
        specimen_ref = specimen.get("reference") if isinstance(specimen, dict) else None
        self.candidates[id(resource)] = resource
        for part, concept, as_value in matches:
            self.items.setdefault(concept, []).append(
                _Item(
                    resource,
                    part,
                    reference,
                    "Observation",
                    when,
                    raw,
                    concept,
                    as_value,
                    specimen=specimen_ref if isinstance(specimen_ref, str) else None,
                )
            )

    def _condition_status(self, resource: Json) -> str | None:
        """How a problem list entry reads: active, suspected, inactive or refuted; ``None`` (skipped, with the
        reason) for entered-in-error, no clinical status, or a status no rule knows."""
        data = self.rules.data
        verification = _first_code(resource.get("verificationStatus"))
        if verification in data.condition_excluded_verification:
            self.skip(resource, f"condition-{verification}")
            return None
        if verification in data.condition_refuted_verification:
            return _REFUTED
        clinical = _first_code(resource.get("clinicalStatus"))
        abated = any(k.startswith("abatement") for k in self.full(resource))  # every key, as sent
        if abated or clinical in data.condition_inactive_statuses:
            return _INACTIVE
        if verification in data.condition_suspected_verification:
            return _SUSPECTED
        if clinical is None:
            self.skip(resource, "condition-no-clinical-status")
            return None
        if clinical in data.condition_clinical_statuses:
            return _ACTIVE
        self.skip(resource, f"condition-{clinical}")
        return None

    def _condition(self, resource: Json, full_url: str | None) -> None:
        reason = self._subject_reason(resource)
        if reason is not None:
            self.skip(resource, reason)
            return
        concepts = self.terminology.concepts_for_codeable(resource.get("code")) & self.finding_concepts
        if not concepts:
            self.skip(resource, "unrelated")
            return
        status = self._condition_status(resource)
        if status is None:
            return
        when, raw = condition_effective(resource)
        if not self._admit_date(resource, when, raw):
            return
        reference = self._reference(resource, full_url)
        self.candidates[id(resource)] = resource
        for concept in concepts:
            self.items.setdefault(concept, []).append(
                _Item(resource, resource, reference, "Condition", when, raw, concept, status=status)
            )

    def _admit_date(self, resource: Json, when: datetime | None, raw: str | None) -> bool:
        if raw is not None and when is None:
            self.skip(resource, "unreadable-date")
            return False
        if when is not None and when > shifted(self.at, timedelta(hours=self.rules.data.future_tolerance_hours)):
            self.skip(resource, "future-dated")
            return False
        return True

    # -- pass 2: predictors ----------------------------------------------------------------------------
    def window(
        self, concepts: Sequence[str], lookback_days: int | None, rtype: str = "Observation"
    ) -> tuple[list[_Item], _Item | None]:
        """Items of ``concepts`` (of resource type ``rtype``) inside the look-back window, newest first, and
        the newest one outside it."""
        inside: list[_Item] = []
        stale: _Item | None = None
        since = days_before(self.at, lookback_days) if lookback_days is not None else None
        for concept in concepts:
            for item in self.items.get(concept, ()):
                if item.rtype != rtype:
                    continue
                if since is not None:
                    if item.when is None:
                        self.skip(item.resource, "no-date")
                        continue
                    if item.when < since:
                        self.skip(item.resource, "outside-lookback")
                        if stale is None or (stale.when is not None and item.when > stale.when):
                            stale = item
                        continue
                inside.append(item)
        inside.sort(key=_newest_first)
        return inside, stale

    def decide(
        self,
        predictor_id: str,
        options: list[_Option],
        *,
        unit: str | None,
        stale: _Item | None,
        lookback_days: int | None,
        concepts: Sequence[str] = (),
        on_conflict: str = "present",
        unpaired: tuple[timedelta, _Item, _Item] | None = None,
    ) -> PredictorFinding:
        """Newest decisive option wins; at equal times, meeting the predictor wins, then severity (or, with
        ``on_conflict = "unknown"``, results of the same date that disagree are conflicting). With no decisive
        option the finding is unknown, and says why."""
        options.sort(key=lambda o: o.when or _EPOCH, reverse=True)
        by_date = on_conflict == "unknown"
        equivocal: list[_Reading] = []
        unreadable: list[_Option] = []
        for _, group in groupby(options, key=lambda o: (o.when.date() if o.when else None) if by_date else o.when):
            decisive: list[_Reading] = []
            implausible: list[_Reading] = []
            for option in group:
                reading = option.read()
                if reading is None:
                    unreadable.append(option)
                elif reading.basis == BASIS_IMPLAUSIBLE:
                    implausible.append(reading)
                    self._use(reading)
                elif reading.decisive is None:
                    equivocal.append(reading)
                    self._use(reading)
                else:
                    decisive.append(reading)
            if decisive:
                met = [r for r in decisive if r.decisive]
                for reading in decisive:
                    self._use(reading)
                if by_date and met and len(met) < len(decisive):
                    return PredictorFinding(
                        id=predictor_id,
                        state=State.UNKNOWN,
                        effective=_latest_raw([i for r in decisive for i in r.items]),
                        sources=tuple(s for r in decisive for s in r.sources),
                        basis=BASIS_CONFLICTING,
                    )
                pool = met or decisive
                chosen = max(pool, key=lambda r: r.severity)
                return PredictorFinding(
                    id=predictor_id,
                    state=State.PRESENT if chosen.decisive else State.ABSENT,
                    value=chosen.value,
                    unit=chosen.unit,
                    effective=chosen.items[0].when_raw if len(chosen.items) == 1 else _latest_raw(chosen.items),
                    sources=chosen.sources,
                    basis=chosen.basis,
                )
            if implausible:
                flagged = implausible[0]
                return PredictorFinding(
                    id=predictor_id,
                    state=State.UNKNOWN,
                    value=flagged.value,
                    unit=flagged.unit,
                    effective=_latest_raw(flagged.items),
                    sources=flagged.sources,
                    basis=BASIS_IMPLAUSIBLE,
                )
        pending = self.pending_items(concepts, lookback_days)
        if pending and (not equivocal or _newer(pending[0], equivocal[0].items)):
            return PredictorFinding(
                id=predictor_id,
                state=State.UNKNOWN,
                effective=pending[0].when_raw,
                sources=tuple(self.source(i, None, None) for i in pending[:3]),
                basis=BASIS_PENDING,
                basis_detail={"status": str(pending[0].resource.get("status"))},
            )
        if equivocal:
            newest = equivocal[0]
            return PredictorFinding(
                id=predictor_id,
                state=State.UNKNOWN,
                value=newest.value,
                unit=newest.unit,
                effective=_latest_raw(newest.items),
                sources=tuple(s for r in equivocal for s in r.sources),
                basis=BASIS_EQUIVOCAL,
            )
        if unpaired is not None:
            gap, first, second = unpaired
            return PredictorFinding(
                id=predictor_id,
                state=State.UNKNOWN,
                effective=_later_raw(first, second),
                sources=(self.source(first, None, None), self.source(second, None, None)),
                basis=BASIS_UNPAIRED,
                basis_detail={"gap_minutes": str(int(gap.total_seconds() // 60))},
            )
        if unreadable:
            option = unreadable[0]
            items = option.items
            parts = map(self.full_part, items)  # as sent: an invalid resource may hold a value[x] nobody pruned
            written = next((t for t in (_value_text(p) or _raw_value(p) for p in parts) if t), "")
            return PredictorFinding(
                id=predictor_id,
                state=State.UNKNOWN,
                unit=unit,
                effective=option.when_raw,
                sources=tuple(self.source(i, None, None) for i in items),
                basis=BASIS_UNREADABLE,
                basis_detail={"value": written[:80]},
            )
        if stale is not None:
            return PredictorFinding(
                id=predictor_id,
                state=State.UNKNOWN,
                effective=stale.when_raw,
                sources=(self.source(stale, None, None),),
                basis=BASIS_STALE,
                basis_detail={"lookback_days": str(lookback_days)},
            )
        return PredictorFinding(id=predictor_id, state=State.UNKNOWN, unit=unit, basis=BASIS_NO_DATA)

    def pending_items(self, concepts: Sequence[str], lookback_days: int | None) -> list[_Item]:
        """Preliminary / registered results of ``concepts`` inside the look-back window, newest first."""
        since = days_before(self.at, lookback_days) if lookback_days is not None else None
        found = [
            item
            for concept in concepts
            for item in self.pending.get(concept, ())
            if since is None or (item.when is not None and item.when >= since)
        ]
        found.sort(key=_newest_first)
        return found

    def _use(self, reading: _Reading) -> None:
        for item in reading.items:
            self.used.add(id(item.resource))

    def source(
        self,
        item: _Item,
        normalised: float | None,
        normalised_unit: str | None,
        value_text: str | None = None,
    ) -> Source:
        part = item.part
        code = part.get("code") if not item.as_value else part.get("valueCodeableConcept")
        texts = codeable_texts(code)
        unit = None
        quantity = part.get("valueQuantity") if not item.as_value else None
        if quantity is None and isinstance(part.get("valueString"), str):
            quantity = _quantity_of(part)
        if isinstance(quantity, dict):
            recorded_unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else quantity.get("code")
            unit = recorded_unit if isinstance(recorded_unit, str) else None
        return Source(
            reference=item.reference,
            resource_type=item.rtype,
            effective=item.when_raw,
            concept=item.concept,
            code_display=texts[0] if texts else self.terminology.concepts[item.concept].title,
            value=value_text if value_text is not None else _value_text(part),
            unit=unit,
            normalised_value=normalised,
            normalised_unit=normalised_unit,
            code_text=texts[0] if texts else None,
        )

    # -- readers ---------------------------------------------------------------------------------------
    def read_antibody(self, item: _Item, rule: AntibodyRule) -> _Reading | None:
        if not self.valid(item.resource):
            return None
        part = item.part
        shown = _value_text(part)
        verdict = verdict_of_interpretation(self.terminology, self.answers, part.get("interpretation"))
        if verdict is None:
            verdict = self._antibody_value(part, rule, item.concept in rule.titer_valuesets)
        if verdict is None:
            self.skip(item.resource, "unrecognised-value" if _has_value(part) else "no-value")
            return None
        decisive = None if verdict is Verdict.INDETERMINATE else verdict is Verdict.POSITIVE
        return _Reading(decisive, shown or verdict.value, None, (item,), (self.source(item, None, None, shown),))

    def _antibody_value(self, part: Json, rule: AntibodyRule, titer_code: bool) -> Verdict | None:
        answers, terminology = self.answers, self.terminology
        if "valueCodeableConcept" in part:
            return verdict_of_codeable(terminology, answers, part["valueCodeableConcept"])
        if "valueBoolean" in part:
            flag = part["valueBoolean"]
            return None if not isinstance(flag, bool) else (Verdict.POSITIVE if flag else Verdict.NEGATIVE)
        text = part.get("valueString")
        if isinstance(text, str):
            titer = parse_titer(text)
            if titer is not None:
                return _titer_verdict(titer[1], titer[0], rule.titer_cutoff)
            verdict = verdict_of_text(terminology, answers, text)
            if verdict is not None:
                return verdict
            written = parse_number_text(text)  # ">1000", "35 U/mL": against the reported range or cut-off
            if written is None:
                return None
            return _reference_range_verdict(written[1], written[0], part.get("referenceRange"))
        ratio = part.get("valueRatio")
        if isinstance(ratio, dict):
            numerator = as_number((ratio.get("numerator") or {}).get("value"))
            denominator = as_number((ratio.get("denominator") or {}).get("value"))
            if numerator and denominator:
                return _titer_verdict(denominator / numerator, None, rule.titer_cutoff)
            return None
        quantity = part.get("valueQuantity")
        number: float | None = None
        comparator: str | None = None
        unit: str | None = None
        if isinstance(quantity, dict):
            number = as_number(quantity.get("value"))
            comparator = quantity.get("comparator") if isinstance(quantity.get("comparator"), str) else None
            unit = self.units.ucum_of(quantity)
        elif "valueInteger" in part:
            number = as_number(part["valueInteger"])
        if number is None:
            return None
        if titer_code or (unit is not None and unit.lower() in ("{titer}", "{dilution}")):
            return _titer_verdict(number, comparator, rule.titer_cutoff)
        return _reference_range_verdict(number, comparator, part.get("referenceRange"))

    def read_quantity(self, item: _Item, rule: QuantityRule) -> _Reading | None:
        if not self.valid(item.resource):
            return None
        quantity = _quantity_of(item.part)
        if quantity is None:
            self.skip(item.resource, "unrecognised-value" if _has_value(item.part) else "no-value")
            return None
        normalised = self.normalise(
            quantity,
            rule.unit,
            rule.molar.unit if rule.molar else None,
            rule.molar.per_unit if rule.molar else None,
        )
        if normalised is None:
            self.skip(item.resource, "unit-not-convertible")
            return None
        comparator = quantity.get("comparator") if isinstance(quantity.get("comparator"), str) else None
        sources = (self.source(item, _round(normalised), rule.unit),)
        if not _plausible(rule, normalised):
            return _Reading(None, _round(normalised), rule.unit, (item,), sources, basis=BASIS_IMPLAUSIBLE)
        decisive = meets(normalised, comparator, rule.operator, rule.threshold)
        return _Reading(
            decisive,
            _round(normalised),
            rule.unit,
            (item,),
            sources,
            severity=normalised if rule.operator in (">", ">=") else -normalised,
        )

    def normalise(
        self, quantity: Json, target: str, molar_unit: str | None = None, per_unit: float | None = None
    ) -> float | None:
        number = as_number(quantity.get("value"))
        unit = self.units.ucum_of(quantity)
        if number is None or unit is None:
            return None
        converted = self.units.convert(number, unit, target)
        if converted is None and molar_unit is not None and per_unit is not None:
            molar = self.units.convert(number, unit, molar_unit)
            converted = None if molar is None else molar / per_unit
        return bounded(converted)

    def read_grade(self, item: _Item, rule: GradeRule) -> _Reading | None:
        if not self.valid(item.resource):
            return None
        part = item.part
        raw: object = None
        if isinstance(part.get("valueQuantity"), dict):
            raw = part["valueQuantity"].get("value")
        elif "valueInteger" in part:
            raw = part["valueInteger"]
        elif "valueString" in part:
            raw = part["valueString"]
        elif isinstance(part.get("valueCodeableConcept"), dict):
            raw = next(iter(codeable_texts(part["valueCodeableConcept"])), None)
        grade = parse_grade(raw)
        if grade is None or grade > rule.scale_max:
            self.skip(item.resource, "unrecognised-value" if _has_value(part) else "no-value")
            return None
        decisive = meets(grade, None, rule.operator, rule.threshold)
        return _Reading(
            decisive, _round(grade), None, (item,), (self.source(item, _round(grade), None),), severity=-grade
        )

    def read_ratio_direct(self, item: _Item) -> tuple[float, tuple[Source, ...]] | None:
        """A ratio reported as a number (valueQuantity, valueRatio or a numeric string)."""
        if not self.valid(item.resource):
            return None
        part = item.part
        quantity = part.get("valueQuantity")
        number: float | None = None
        if isinstance(quantity, dict):
            number = as_number(quantity.get("value"))
        elif isinstance(part.get("valueRatio"), dict):
            ratio = part["valueRatio"]
            numerator = as_number((ratio.get("numerator") or {}).get("value"))
            denominator = as_number((ratio.get("denominator") or {}).get("value"))
            number = bounded(numerator / denominator) if numerator is not None and denominator else None
        elif "valueString" in part and isinstance(part["valueString"], str):
            number = _number_in_text(part["valueString"])
        if number is None or number < 0:
            self.skip(item.resource, "unrecognised-value" if _has_value(part) else "no-value")
            return None
        return number, (self.source(item, _round(number), None),)

    def read_measure(self, item: _Item, unit: str) -> float | None:
        if not self.valid(item.resource):
            return None
        quantity = item.part.get("valueQuantity")
        value = self.normalise(quantity, unit) if isinstance(quantity, dict) else None
        if value is None or value <= 0:
            self.skip(item.resource, "unit-not-convertible" if isinstance(quantity, dict) else "no-value")
            return None
        return value


# -- the predictor kinds -------------------------------------------------------------------------------


def _antibody(run: _Run, pid: str, rule: AntibodyRule) -> PredictorFinding:
    items, stale = run.window(rule.concepts(), rule.lookback_days)
    options = [_Option(i.when, i.when_raw, _bind(run.read_antibody, i, rule), (i,)) for i in items]
    return run.decide(
        pid,
        options,
        unit=None,
        stale=stale,
        lookback_days=rule.lookback_days,
        concepts=rule.concepts(),
        on_conflict=rule.on_conflict,
    )


def _quantity(run: _Run, pid: str, rule: QuantityRule) -> PredictorFinding:
    items, stale = run.window(rule.concepts(), rule.lookback_days)
    options = [_Option(i.when, i.when_raw, _bind(run.read_quantity, i, rule), (i,)) for i in items]
    return run.decide(
        pid, options, unit=rule.unit, stale=stale, lookback_days=rule.lookback_days, concepts=rule.concepts()
    )


def _grade(run: _Run, pid: str, rule: GradeRule) -> PredictorFinding:
    items, stale = run.window(rule.concepts(), rule.lookback_days)
    options = [_Option(i.when, i.when_raw, _bind(run.read_grade, i, rule), (i,)) for i in items]
    found = run.decide(pid, options, unit=None, stale=stale, lookback_days=rule.lookback_days, concepts=rule.concepts())
    if found.basis == BASIS_NO_DATA:  # an examination nobody recorded: the card asks for it at this visit
        return PredictorFinding(id=pid, state=State.UNKNOWN, basis=BASIS_NOT_RECORDED)
    return found


def _measured(
    rule: RatioRule | BmiRule, value: float, items: tuple[_Item, ...], sources: tuple[Source, ...], basis: str
) -> _Reading:
    """A reading of a measured (or computed) value against the rule's threshold (implausible: flagged)."""
    if not _plausible(rule, value):
        return _Reading(None, _round(value), rule.unit, items, sources, basis=BASIS_IMPLAUSIBLE)
    decisive = meets(value, None, rule.operator, rule.threshold)
    return _Reading(decisive, _round(value), rule.unit, items, sources, basis=basis, severity=_severity(rule, value))


def _direct_or_paired(
    run: _Run,
    pid: str,
    rule: RatioRule | BmiRule,
    items: list[_Item],
    stale: _Item | None,
    read_direct: Callable[[_Item], tuple[float, tuple[Source, ...]] | None],
    pairs: list[tuple[list[_Item], list[_Item], timedelta]],
    compute: Callable[[_Item, _Item], tuple[float, tuple[Source, ...]] | None],
) -> PredictorFinding:
    """A value reported directly (items of ``rule.valuesets``), or computed from two results taken close
    together; the newest decides."""

    def direct(item: _Item) -> Callable[[], _Reading | None]:
        def read() -> _Reading | None:
            got = read_direct(item)
            return None if got is None else _measured(rule, got[0], (item,), got[1], BASIS_REPORTED)

        return read

    def computed(top: _Item, bottom: _Item) -> Callable[[], _Reading | None]:
        def read() -> _Reading | None:
            got = compute(top, bottom)
            return None if got is None else _measured(rule, got[0], (top, bottom), got[1], BASIS_COMPUTED)

        return read

    options = [_Option(i.when, i.when_raw, direct(i), (i,)) for i in items if i.concept in rule.valuesets]
    unpaired: tuple[timedelta, _Item, _Item] | None = None
    for tops, bottoms, gap in pairs:
        paired = False
        for top, bottom in _pairs(tops, bottoms, gap):
            paired = True
            options.append(_Option(_later(top, bottom), _later_raw(top, bottom), computed(top, bottom), (top, bottom)))
        if not paired and unpaired is None:
            unpaired = _closest(tops, bottoms)
    return run.decide(
        pid,
        options,
        unit=rule.unit,
        stale=stale,
        lookback_days=rule.lookback_days,
        concepts=rule.concepts(),
        unpaired=unpaired,
    )


def _ratio(run: _Run, pid: str, rule: RatioRule) -> PredictorFinding:
    items, stale = run.window(rule.concepts(), rule.lookback_days)

    def compute(numerator: _Item, denominator: _Item) -> tuple[float, tuple[Source, ...]] | None:
        if not (run.valid(numerator.resource) and run.valid(denominator.resource)):
            return None
        top_q, bottom_q = numerator.part.get("valueQuantity"), denominator.part.get("valueQuantity")
        if not isinstance(top_q, dict) or not isinstance(bottom_q, dict):
            run.skip(numerator.resource, "no-value")
            return None
        top = as_number(top_q.get("value"))
        top_unit = run.units.ucum_of(top_q) or "1"
        bottom = run.normalise(bottom_q, top_unit) if run.units.ucum_of(bottom_q) else as_number(bottom_q.get("value"))
        if top is None or bottom is None or bottom <= 0:
            run.skip(numerator.resource, "unit-not-convertible")
            return None
        ratio = bounded(top / bottom)
        if ratio is None:
            run.skip(numerator.resource, "unrecognised-value")
            return None
        return ratio, (run.source(numerator, None, None), run.source(denominator, None, None))

    gap = timedelta(minutes=rule.pair_max_gap_minutes)
    pairs = [
        ([i for i in items if i.concept == top], [i for i in items if i.concept == bottom], gap)
        for top, bottom in rule.pairs
    ]
    return _direct_or_paired(run, pid, rule, items, stale, run.read_ratio_direct, pairs, compute)


def _bmi(run: _Run, pid: str, rule: BmiRule) -> PredictorFinding:
    items, stale = run.window(rule.concepts(), rule.lookback_days)

    def read_direct(item: _Item) -> tuple[float, tuple[Source, ...]] | None:
        value = run.read_measure(item, rule.unit)
        return None if value is None else (value, (run.source(item, _round(value), rule.unit),))

    def compute(weight: _Item, height: _Item) -> tuple[float, tuple[Source, ...]] | None:
        kg = run.read_measure(weight, rule.weight_unit)
        metres = run.read_measure(height, rule.height_unit)
        if kg is None or metres is None:
            return None
        sources = (
            run.source(weight, _round(kg), rule.weight_unit),
            run.source(height, _round(metres), rule.height_unit),
        )
        bmi = bounded(kg / (metres * metres)) if metres * metres > 0 else None
        if bmi is None:  # a height so small (1e-300 m) that the arithmetic breaks: not a measurement
            run.skip(height.resource, "unrecognised-value")
            return None
        return bmi, sources

    weights = [i for i in items if i.concept in rule.weight_valuesets]
    heights = [i for i in items if i.concept in rule.height_valuesets]
    pairs = [(weights, heights, timedelta(days=rule.pair_max_gap_days))]
    return _direct_or_paired(run, pid, rule, items, stale, read_direct, pairs, compute)


def _finding(run: _Run, pid: str, rule: FindingRule) -> PredictorFinding:
    """A clinical finding as a clinician reads the chart: present (active confirmed Condition, or a positive finding
    Observation), suspected, recorded absent, or not recorded (unknown)."""
    conditions: list[_Item] = []
    for concept in rule.valuesets:
        conditions.extend(i for i in run.items.get(concept, ()) if i.rtype == "Condition")
    conditions = [c for c in sorted(conditions, key=_newest_first) if run.valid(c.resource)]
    history = [c for c in conditions if rule.history_counts and c.status == _INACTIVE]
    active = [c for c in conditions if c.status == _ACTIVE] or history
    suspected = [c for c in conditions if c.status == _SUSPECTED]
    absent = [c for c in conditions if c.status == _REFUTED or (c.status == _INACTIVE and not rule.history_counts)]
    observed: PredictorFinding | None = None
    if rule.observations:
        observations, stale = run.window(rule.valuesets, rule.lookback_days)
        options = [_Option(i.when, i.when_raw, _bind(_read_finding_observation, run, i), (i,)) for i in observations]
        observed = run.decide(
            pid, options, unit=None, stale=stale, lookback_days=rule.lookback_days, concepts=rule.valuesets
        )
    for item in conditions:
        run.used.add(id(item.resource))
    if active:
        sources = tuple(run.source(c, None, None, c.status) for c in active)
        basis = BASIS_CONDITION if active[0].status == _ACTIVE else BASIS_HISTORY
        if observed is not None and observed.state is State.PRESENT:
            sources = sources + observed.sources
        elif observed is not None and observed.state is State.ABSENT:
            newest_condition = active[0].when
            newest_obs = _max_when(observed)
            if newest_condition is None or (newest_obs is not None and newest_obs > newest_condition):
                basis = BASIS_CONFLICT
                sources = sources + observed.sources
        return PredictorFinding(
            id=pid,
            state=State.PRESENT,
            value=True,
            effective=active[0].when_raw,
            sources=sources,
            basis=basis,
            basis_detail=_onset_detail(active[0].resource),
        )
    if observed is not None and observed.state is State.PRESENT:
        return PredictorFinding(
            id=pid,
            state=State.PRESENT,
            value=True,
            effective=observed.effective,
            sources=observed.sources,
            basis=BASIS_OBSERVATION,
        )
    recorded_absent: list[tuple[datetime | None, PredictorFinding]] = []
    if observed is not None and observed.state is State.ABSENT:
        recorded_absent.append(
            (
                _max_when(observed),
                PredictorFinding(
                    id=pid,
                    state=State.ABSENT,
                    value=False,
                    effective=observed.effective,
                    sources=observed.sources,
                    basis=BASIS_OBSERVATION,
                ),
            )
        )
    if absent:
        newest = absent[0]
        recorded_absent.append(
            (
                newest.when,
                PredictorFinding(
                    id=pid,
                    state=State.ABSENT,
                    value=False,
                    effective=newest.when_raw,
                    sources=tuple(run.source(c, None, None, c.status) for c in absent),
                    basis=BASIS_REFUTED if newest.status == _REFUTED else BASIS_RESOLVED,
                ),
            )
        )
    recorded_absent.sort(key=lambda pair: pair[0] or _EPOCH, reverse=True)
    if suspected and not (recorded_absent and _newer_than(recorded_absent[0][0], suspected[0].when)):
        return PredictorFinding(
            id=pid,
            state=State.UNKNOWN,
            effective=suspected[0].when_raw,
            sources=tuple(run.source(c, None, None, c.status) for c in suspected),
            basis=BASIS_SUSPECTED,
        )
    if recorded_absent:
        return recorded_absent[0][1]
    if observed is not None and observed.basis != BASIS_NO_DATA:
        return observed  # a finding Observation that is pending, equivocal, unreadable or too old: says why
    return PredictorFinding(id=pid, state=State.UNKNOWN, basis=BASIS_NOT_RECORDED)


def _newer_than(first: datetime | None, second: datetime | None) -> bool:
    return first is not None and (second is None or first > second)


def _onset_detail(condition: Json) -> dict[str, str]:
    """When a diagnosis Condition says the disease began: ``onset`` (date as recorded), ``onset_age_years``
    (from ``onsetAge``), or only ``recorded`` (the recorded date)."""
    detail: dict[str, str] = {}
    raw = condition.get("onsetDateTime")
    if raw is None and isinstance(condition.get("onsetPeriod"), dict):
        raw = condition["onsetPeriod"].get("start")
    if isinstance(raw, str) and parse_fhir_datetime(raw) is not None:
        detail["onset"] = raw
    age = condition.get("onsetAge")
    if isinstance(age, dict):
        years = as_number(age.get("value"))
        unit = age.get("code") or age.get("unit")
        factor = {"a": 1.0, "mo": 1 / 12, "wk": 1 / 52.1775, "d": 1 / 365.25}.get(str(unit))
        if years is not None and factor is not None and 0 <= years * factor < 150:
            detail["onset_age_years"] = f"{years * factor:.2f}"
    recorded = condition.get("recordedDate")
    if not detail and isinstance(recorded, str) and parse_fhir_datetime(recorded) is not None:
        detail["recorded"] = recorded
    return detail


def _read_finding_observation(run: _Run, item: _Item) -> _Reading | None:
    if not run.valid(item.resource):
        return None
    part = item.part
    verdict: Verdict | None
    if item.as_value:
        verdict = Verdict.POSITIVE
    elif "valueBoolean" in part and isinstance(part["valueBoolean"], bool):
        verdict = Verdict.POSITIVE if part["valueBoolean"] else Verdict.NEGATIVE
    elif "valueCodeableConcept" in part:
        verdict = verdict_of_codeable(run.terminology, run.answers, part["valueCodeableConcept"])
    elif isinstance(part.get("valueString"), str):
        verdict = verdict_of_text(run.terminology, run.answers, part["valueString"])
    elif not _has_value(part) and "dataAbsentReason" not in part:
        verdict = Verdict.POSITIVE  # an Observation coded as the finding itself, with no value, records it
    else:
        verdict = None
    if verdict is None:
        run.skip(item.resource, "unrecognised-value" if _has_value(part) else "no-value")
        return None
    decisive = None if verdict is Verdict.INDETERMINATE else verdict is Verdict.POSITIVE
    shown = _value_text(part) or ("recorded" if verdict is Verdict.POSITIVE else verdict.value)
    return _Reading(decisive, shown, None, (item,), (run.source(item, None, None, shown),))


_KINDS: Mapping[type[Any], Callable[[_Run, str, Any], PredictorFinding]] = {
    AntibodyRule: _antibody,
    QuantityRule: _quantity,
    RatioRule: _ratio,
    BmiRule: _bmi,
    GradeRule: _grade,
    FindingRule: _finding,
}


class Reader:
    """Everything about the rules that does not change between patients, computed once (the engine keeps one)."""

    def __init__(
        self,
        terminology: Terminology,
        rules: MappingRules,
        *,
        answers: AnswerSets | None = None,
        units: UnitConverter | None = None,
    ) -> None:
        self.terminology = terminology
        self.rules = rules
        self.answers = answers or AnswerSets()
        self.units = units or UnitConverter(rules.data.unit_aliases)
        self.wanted = rules.concepts()
        self.finding_concepts = frozenset(
            c for rule in rules.predictors.values() if isinstance(rule, FindingRule) for c in rule.valuesets
        )
        self.pattern_concepts = tuple(
            sorted(c for c in self.wanted if c in terminology.concepts and terminology.concepts[c].text_pattern)
        )
        self.validator = ResourceValidator()

    def read(self, resources: Iterable[object], *, patient_id: str, at: datetime) -> Chart:
        """One pass over ``resources``; predictors are then evaluated on demand by :meth:`Chart.findings`."""
        if at.tzinfo is None:
            raise ValueError("the evaluation time must be timezone-aware")
        run = _Run(
            terminology=self.terminology,
            rules=self.rules,
            patient_id=patient_id,
            at=at,
            answers=self.answers,
            units=self.units,
            wanted=self.wanted,
            finding_concepts=self.finding_concepts,
            pattern_concepts=self.pattern_concepts,
            validator=self.validator,
            originals=resources if isinstance(resources, PrunedResources) else None,
        )
        run.collect(resources)
        return Chart(run)


class Chart:
    """One patient's resources, read once. Predictors are evaluated when asked for, each at most once, so a
    caller can decide from a few (eligibility) whether the others are needed at all."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._done: dict[str, PredictorFinding] = {}

    def findings(self, predictor_ids: Iterable[str] | None = None) -> PatientFindings:
        """The findings of ``predictor_ids`` (default: every predictor). Predictors not evaluated are absent from
        ``predictors`` (and read as unknown by :meth:`PatientFindings.state`)."""
        run = self._run
        wanted = list(run.rules.predictors) if predictor_ids is None else list(predictor_ids)
        for pid in wanted:
            if pid not in self._done:
                rule = run.rules.predictors[pid]
                self._done[pid] = _KINDS[type(rule)](run, pid, rule)
        complete = len(self._done) == len(run.rules.predictors)
        unused = "superseded" if complete else "not-evaluated"
        reasons = dict(run.reasons)
        for key in run.candidates:
            if key not in run.used:
                reasons.setdefault(key, unused)
        skipped = Counter(reason for key, reason in reasons.items() if key not in run.used)
        birth = parse_fhir_date(run.birth_date_raw)
        at = run.at
        age = completed_years(birth, at.date()) if birth is not None and birth <= at.date() else None
        return PatientFindings(
            patient_id=run.patient_id,
            evaluated_at=at,
            birth_date=birth,
            age_years=age,
            predictors={pid: self._done[pid] for pid in run.rules.predictors if pid in self._done},
            resources_seen=run.seen,
            resources_used=len(run.used),
            skipped=dict(sorted(skipped.items())),
            malformed=run.malformed,
            patient_found=run.patient_found,
            sex=run.sex,
        )


def extract_findings(
    resources: Iterable[object],
    *,
    patient_id: str,
    at: datetime,
    terminology: Terminology,
    rules: MappingRules,
    answers: AnswerSets | None = None,
    units: UnitConverter | None = None,
) -> PatientFindings:
    """Read ``resources`` (any mix of Patient, Observation, Condition and Bundles of them, as parsed JSON)
    for ``patient_id`` at evaluation time ``at`` (timezone-aware) and return every predictor's finding."""
    reader = Reader(terminology, rules, answers=answers, units=units)
    return reader.read(resources, patient_id=patient_id, at=at).findings()


# -- helpers -------------------------------------------------------------------------------------------


def _flatten(inputs: Iterable[object]) -> list[tuple[Json | None, Any]]:
    """``(resource, fullUrl)`` for every resource, Bundles unpacked (nested up to a small depth). Anything that is
    not a resource gives ``(None, the thing)``."""
    out: list[tuple[Json | None, Any]] = []
    for item in inputs:
        _unpack(item, None, 0, out)
    return out


def _unpack(item: object, full_url: str | None, depth: int, out: list[tuple[Json | None, Any]]) -> None:
    if not isinstance(item, dict):
        out.append((None, item))
        return
    rtype = item.get("resourceType")
    if rtype != "Bundle":
        out.append((item, full_url) if isinstance(rtype, str) else (None, item))
        return
    entries = item.get("entry")
    if depth >= _MAX_BUNDLE_DEPTH or (entries is not None and not isinstance(entries, list)):
        out.append((None, item))
        return
    for entry in entries or ():
        if not isinstance(entry, dict):
            out.append((None, entry))
            continue
        resource = entry.get("resource")
        if resource is None:
            continue  # e.g. a transaction-response entry: nothing to read
        url = entry.get("fullUrl")
        if isinstance(resource, dict) and resource.get("resourceType") != "Bundle":
            rtype = resource.get("resourceType")
            out.append(
                (resource, url if isinstance(url, str) else None) if isinstance(rtype, str) else (None, resource)
            )
        else:
            _unpack(resource, url if isinstance(url, str) else None, depth + 1, out)


def _first_code(codeable: object) -> str | None:
    if isinstance(codeable, dict):
        codings = codeable.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    return str(coding["code"])
    return None


def _has_value(part: Json) -> bool:
    return any(key.startswith("value") for key in part)


def _value_text(part: Json) -> str | None:
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict):
        return quantity_text(quantity)
    if isinstance(part.get("valueString"), str):
        return str(part["valueString"])
    if isinstance(part.get("valueBoolean"), bool):
        return "true" if part["valueBoolean"] else "false"
    codeable = part.get("valueCodeableConcept")
    if codeable is not None:
        texts = codeable_texts(codeable)
        if texts:
            return texts[0]
        codings = codeable.get("coding") if isinstance(codeable, dict) else None
        if isinstance(codings, list) and codings and isinstance(codings[0], dict):
            return str(codings[0].get("code"))
    ratio = part.get("valueRatio")
    if isinstance(ratio, dict):
        numerator = as_number((ratio.get("numerator") or {}).get("value"))
        denominator = as_number((ratio.get("denominator") or {}).get("value"))
        if numerator is not None and denominator is not None:
            return f"{numerator:g}:{denominator:g}"
    if "valueInteger" in part:
        return str(part["valueInteger"])
    return None


def _titer_verdict(dilution: float, comparator: str | None, cutoff: float | None) -> Verdict | None:
    if cutoff is None:
        return None
    met = meets(dilution, comparator, ">=", cutoff)
    if met is None:
        return Verdict.INDETERMINATE
    return Verdict.POSITIVE if met else Verdict.NEGATIVE


def _reference_range_verdict(number: float, comparator: str | None, ranges: object) -> Verdict | None:
    """Above the reference range's high limit is positive; at or below it negative. A text range such as
    ``"<11"`` means 11 and above is positive. No usable range: no verdict."""
    if not isinstance(ranges, list):
        return None
    for reference in ranges:
        if not isinstance(reference, dict):
            continue
        high = (
            as_number((reference.get("high") or {}).get("value")) if isinstance(reference.get("high"), dict) else None
        )
        if high is not None:
            met = meets(number, comparator, ">", high)
            return Verdict.INDETERMINATE if met is None else (Verdict.POSITIVE if met else Verdict.NEGATIVE)
        text = reference.get("text")
        if isinstance(text, str) and len(text) <= _MAX_REFERENCE_TEXT:
            m = _REF_RANGE_TEXT.match(text) or _REF_RANGE_TEXT.search(text)
            limit = bounded(float(m.group(2) or m.group(3) or m.group(4))) if m is not None else None
            if m is not None and limit is not None:
                operator = ">=" if m.group(1) in ("<", "＜") else ">"
                met = meets(number, comparator, operator, limit)
                return Verdict.INDETERMINATE if met is None else (Verdict.POSITIVE if met else Verdict.NEGATIVE)
    return None


_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


def _number_in_text(text: str) -> float | None:
    m = _NUMBER.match(text) if len(text) <= _MAX_REFERENCE_TEXT else None
    return bounded(float(m.group(1))) if m else None


def _pairs(tops: list[_Item], bottoms: list[_Item], gap: timedelta) -> Iterator[tuple[_Item, _Item]]:
    """For each ``top`` item, the ``bottom`` item of the same specimen, else the one closest in time within
    ``gap`` (never the same part). The bottoms are sorted once and searched by bisection:
    O((tops + bottoms) log bottoms)."""
    by_specimen: dict[str, _Item] = {}
    for bottom in bottoms:
        if bottom.specimen is not None:
            by_specimen.setdefault(bottom.specimen, bottom)
    dated = sorted((b for b in bottoms if b.when is not None), key=lambda b: b.when or _EPOCH)
    times = [b.when or _EPOCH for b in dated]
    for top in tops:
        same = by_specimen.get(top.specimen) if top.specimen is not None else None
        if same is not None and same.part is not top.part:
            yield top, same
            continue
        if top.when is None:
            continue
        index = bisect.bisect_left(times, top.when)
        best: _Item | None = None
        best_gap: timedelta | None = None
        for candidate in range(max(0, index - 2), min(len(dated), index + 2)):
            bottom = dated[candidate]
            if bottom.part is top.part:
                continue
            distance = abs(times[candidate] - top.when)
            if distance <= gap and (best_gap is None or distance < best_gap):
                best, best_gap = bottom, distance
        if best is not None:
            yield top, best


def _closest(tops: list[_Item], bottoms: list[_Item]) -> tuple[timedelta, _Item, _Item] | None:
    """The pair of a top and a bottom closest in time (when none paired: the card says how far apart)."""
    best: tuple[timedelta, _Item, _Item] | None = None
    dated = sorted((b for b in bottoms if b.when is not None), key=lambda b: b.when or _EPOCH)
    times = [b.when or _EPOCH for b in dated]
    for top in tops:
        if top.when is None:
            continue
        index = bisect.bisect_left(times, top.when)
        for candidate in range(max(0, index - 1), min(len(dated), index + 1)):
            distance = abs(times[candidate] - top.when)
            if best is None or distance < best[0]:
                best = (distance, top, dated[candidate])
    return best


def _plausible(rule: QuantityRule | RatioRule | BmiRule, value: float) -> bool:
    low, high = rule.plausible_min, rule.plausible_max
    return (low is None or value >= low) and (high is None or value <= high)


def _quantity_of(part: Json) -> Json | None:
    """``valueQuantity``, or a quantity written as text (``">1000 ng/mL"``) as a Quantity-shaped dict."""
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict):
        return quantity
    text = part.get("valueString")
    if isinstance(text, str):
        written = parse_number_text(text)
        if written is not None and written[2] is not None:
            comparator, number, unit = written
            shaped: Json = {"value": number, "unit": unit}
            if comparator is not None:
                shaped["comparator"] = comparator
            return shaped
    return None


def _raw_value(part: Json) -> str | None:
    """Whatever value an element holds, as short text (for "could not be read: '…'")."""
    for key, value in part.items():
        if key.startswith("value") and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    return None


def _newer(item: _Item, items: Sequence[_Item]) -> bool:
    """Is ``item`` dated later than every dated item of ``items``?"""
    if item.when is None:
        return False
    return all(other.when is None or item.when > other.when for other in items)


def _later(a: _Item, b: _Item) -> datetime | None:
    if a.when is None or b.when is None:
        return a.when or b.when
    return max(a.when, b.when)


def _later_raw(a: _Item, b: _Item) -> str | None:
    if a.when is None or b.when is None:
        return a.when_raw or b.when_raw
    return a.when_raw if a.when >= b.when else b.when_raw


def _latest_raw(items: Sequence[_Item]) -> str | None:
    dated = [i for i in items if i.when is not None]
    if not dated:
        return items[0].when_raw if items else None
    return max(dated, key=lambda i: i.when or _EPOCH).when_raw


def _max_when(finding: PredictorFinding) -> datetime | None:
    return parse_fhir_datetime(finding.effective)


def _newest_first(item: _Item) -> tuple[int, float]:
    return (0, -item.when.timestamp()) if item.when is not None else (1, 0.0)


def _severity(rule: RatioRule | BmiRule | QuantityRule, value: float) -> float:
    return value if rule.operator in (">", ">=") else -value


def _round(value: float) -> float:
    return round(value, 4)


def _bind(fn: Callable[..., _Reading | None], *args: Any) -> Callable[[], _Reading | None]:
    return lambda: fn(*args)
