"""The predictor kinds: how each kind of rule (antibody, quantity, grade, ratio, BMI, clinical finding) gathers its
options from the screened chart and hands them to :func:`~.decisions.decide`. :data:`KINDS` maps a rule's class to
its function; a new kind of predictor is a new rule class in ``rules.py`` and one function here.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from ..dates import parse_fhir_datetime
from ..model import Basis, PredictorFinding, SkipReason, Source, State
from ..rules import AntibodyRule, BmiRule, FindingRule, GradeRule, QuantityRule, RatioRule
from ..values import as_number, bounded, meets
from .decisions import decide, later, later_raw, window
from .readers import (
    normalise,
    plausible,
    read_antibody,
    read_finding_observation,
    read_grade,
    read_measure,
    read_quantity,
    read_ratio_direct,
    rounded,
)
from .run import ACTIVE, EPOCH, INACTIVE, REFUTED, SUSPECTED, Item, Json, Option, Reading, Run, newest_first

Kind = Callable[[Run, str, Any], PredictorFinding]


def _bind(fn: Callable[..., Reading | None], *args: Any) -> Callable[[], Reading | None]:
    return lambda: fn(*args)


def antibody(run: Run, pid: str, rule: AntibodyRule) -> PredictorFinding:
    items, stale = window(run, rule.concepts(), rule.lookback_days)
    options = [Option(i.when, i.when_raw, _bind(read_antibody, run, i, rule), (i,)) for i in items]
    return decide(
        run,
        pid,
        options,
        unit=None,
        stale=stale,
        lookback_days=rule.lookback_days,
        concepts=rule.concepts(),
        on_conflict=rule.on_conflict,
    )


def quantity(run: Run, pid: str, rule: QuantityRule) -> PredictorFinding:
    items, stale = window(run, rule.concepts(), rule.lookback_days)
    options = [Option(i.when, i.when_raw, _bind(read_quantity, run, i, rule), (i,)) for i in items]
    return decide(
        run, pid, options, unit=rule.unit, stale=stale, lookback_days=rule.lookback_days, concepts=rule.concepts()
    )


def grade(run: Run, pid: str, rule: GradeRule) -> PredictorFinding:
    items, stale = window(run, rule.concepts(), rule.lookback_days)
    options = [Option(i.when, i.when_raw, _bind(read_grade, run, i, rule), (i,)) for i in items]
    found = decide(
        run, pid, options, unit=None, stale=stale, lookback_days=rule.lookback_days, concepts=rule.concepts()
    )
    if found.basis is Basis.NO_DATA:  # an examination nobody recorded: the card asks for it at this visit
        return PredictorFinding(id=pid, state=State.UNKNOWN, basis=Basis.NOT_RECORDED)
    return found


def _measured(
    rule: RatioRule | BmiRule, value: float, items: tuple[Item, ...], sources: tuple[Source, ...], basis: Basis
) -> Reading:
    """A reading of a measured (or computed) value against the rule's threshold (implausible: flagged)."""
    if not plausible(rule, value):
        return Reading(None, rounded(value), rule.unit, items, sources, basis=Basis.IMPLAUSIBLE)
    decisive = meets(value, None, rule.operator, rule.threshold)
    severity = value if rule.operator in (">", ">=") else -value
    return Reading(decisive, rounded(value), rule.unit, items, sources, basis=basis, severity=severity)


def _direct_or_paired(
    run: Run,
    pid: str,
    rule: RatioRule | BmiRule,
    items: list[Item],
    stale: Item | None,
    read_direct: Callable[[Item], tuple[float, tuple[Source, ...]] | None],
    pairs: list[tuple[list[Item], list[Item], timedelta]],
    compute: Callable[[Item, Item], tuple[float, tuple[Source, ...]] | None],
) -> PredictorFinding:
    """A value reported directly (items of ``rule.valuesets``), or computed from two results taken close
    together; the newest decides."""

    def direct(item: Item) -> Callable[[], Reading | None]:
        def read() -> Reading | None:
            got = read_direct(item)
            return None if got is None else _measured(rule, got[0], (item,), got[1], Basis.REPORTED)

        return read

    def computed(top: Item, bottom: Item) -> Callable[[], Reading | None]:
        def read() -> Reading | None:
            got = compute(top, bottom)
            return None if got is None else _measured(rule, got[0], (top, bottom), got[1], Basis.COMPUTED)

        return read

    options = [Option(i.when, i.when_raw, direct(i), (i,)) for i in items if i.concept in rule.valuesets]
    unpaired: tuple[timedelta, Item, Item] | None = None
    for tops, bottoms, gap in pairs:
        paired = False
        for top, bottom in _pairs(tops, bottoms, gap):
            paired = True
            options.append(Option(later(top, bottom), later_raw(top, bottom), computed(top, bottom), (top, bottom)))
        if not paired and unpaired is None:
            unpaired = _closest(tops, bottoms)
    return decide(
        run,
        pid,
        options,
        unit=rule.unit,
        stale=stale,
        lookback_days=rule.lookback_days,
        concepts=rule.concepts(),
        unpaired=unpaired,
    )


def ratio(run: Run, pid: str, rule: RatioRule) -> PredictorFinding:
    items, stale = window(run, rule.concepts(), rule.lookback_days)
    units = run.setup.units

    def compute(numerator: Item, denominator: Item) -> tuple[float, tuple[Source, ...]] | None:
        if not (run.valid(numerator.resource) and run.valid(denominator.resource)):
            return None
        top_q, bottom_q = numerator.part.get("valueQuantity"), denominator.part.get("valueQuantity")
        if not isinstance(top_q, dict) or not isinstance(bottom_q, dict):
            run.skip(numerator.resource, SkipReason.NO_VALUE)
            return None
        top = as_number(top_q.get("value"))
        top_unit = units.ucum_of(top_q) or "1"
        bottom = normalise(run, bottom_q, top_unit) if units.ucum_of(bottom_q) else as_number(bottom_q.get("value"))
        if top is None or bottom is None or bottom <= 0:
            run.skip(numerator.resource, SkipReason.UNIT_NOT_CONVERTIBLE)
            return None
        value = bounded(top / bottom)
        if value is None:
            run.skip(numerator.resource, SkipReason.UNRECOGNISED_VALUE)
            return None
        return value, (run.source(numerator, None, None), run.source(denominator, None, None))

    def read_direct(item: Item) -> tuple[float, tuple[Source, ...]] | None:
        return read_ratio_direct(run, item)

    gap = timedelta(minutes=rule.pair_max_gap_minutes)
    pairs = [
        ([i for i in items if i.concept == top], [i for i in items if i.concept == bottom], gap)
        for top, bottom in rule.pairs
    ]
    return _direct_or_paired(run, pid, rule, items, stale, read_direct, pairs, compute)


def bmi(run: Run, pid: str, rule: BmiRule) -> PredictorFinding:
    items, stale = window(run, rule.concepts(), rule.lookback_days)

    def read_direct(item: Item) -> tuple[float, tuple[Source, ...]] | None:
        value = read_measure(run, item, rule.unit)
        return None if value is None else (value, (run.source(item, rounded(value), rule.unit),))

    def compute(weight: Item, height: Item) -> tuple[float, tuple[Source, ...]] | None:
        kg = read_measure(run, weight, rule.weight_unit)
        metres = read_measure(run, height, rule.height_unit)
        if kg is None or metres is None:
            return None
        sources = (
            run.source(weight, rounded(kg), rule.weight_unit),
            run.source(height, rounded(metres), rule.height_unit),
        )
        value = bounded(kg / (metres * metres)) if metres * metres > 0 else None
        if value is None:  # a height so small (1e-300 m) that the arithmetic breaks: not a measurement
            run.skip(height.resource, SkipReason.UNRECOGNISED_VALUE)
            return None
        return value, sources

    weights = [i for i in items if i.concept in rule.weight_valuesets]
    heights = [i for i in items if i.concept in rule.height_valuesets]
    pairs = [(weights, heights, timedelta(days=rule.pair_max_gap_days))]
    return _direct_or_paired(run, pid, rule, items, stale, read_direct, pairs, compute)


def finding(run: Run, pid: str, rule: FindingRule) -> PredictorFinding:
    """A clinical finding as a clinician reads the chart: present (active confirmed Condition, or a positive finding
    Observation), suspected, recorded absent, or not recorded (unknown)."""
    conditions: list[Item] = []
    for concept in rule.valuesets:
        conditions.extend(i for i in run.items.get(concept, ()) if i.rtype == "Condition")
    conditions = [c for c in sorted(conditions, key=newest_first) if run.valid(c.resource)]
    history = [c for c in conditions if rule.history_counts and c.status == INACTIVE]
    active = [c for c in conditions if c.status == ACTIVE] or history
    suspected = [c for c in conditions if c.status == SUSPECTED]
    absent = [c for c in conditions if c.status == REFUTED or (c.status == INACTIVE and not rule.history_counts)]
    observed: PredictorFinding | None = None
    if rule.observations:
        observations, stale = window(run, rule.valuesets, rule.lookback_days)
        options = [Option(i.when, i.when_raw, _bind(read_finding_observation, run, i), (i,)) for i in observations]
        observed = decide(
            run, pid, options, unit=None, stale=stale, lookback_days=rule.lookback_days, concepts=rule.valuesets
        )
    for item in conditions:
        run.used.add(id(item.resource))
    if active:
        sources = tuple(run.source(c, None, None, c.status) for c in active)
        basis = Basis.CONDITION if active[0].status == ACTIVE else Basis.CONDITION_HISTORY
        if observed is not None and observed.state is State.PRESENT:
            sources = sources + observed.sources
        elif observed is not None and observed.state is State.ABSENT:
            newest_condition = active[0].when
            newest_obs = parse_fhir_datetime(observed.effective)
            if newest_condition is None or (newest_obs is not None and newest_obs > newest_condition):
                basis = Basis.CONDITION_DESPITE_LATER_OBSERVATION
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
            basis=Basis.OBSERVATION,
        )
    recorded_absent: list[tuple[datetime | None, PredictorFinding]] = []
    if observed is not None and observed.state is State.ABSENT:
        recorded_absent.append(
            (
                parse_fhir_datetime(observed.effective),
                PredictorFinding(
                    id=pid,
                    state=State.ABSENT,
                    value=False,
                    effective=observed.effective,
                    sources=observed.sources,
                    basis=Basis.OBSERVATION,
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
                    basis=Basis.CONDITION_REFUTED if newest.status == REFUTED else Basis.CONDITION_RESOLVED,
                ),
            )
        )
    recorded_absent.sort(key=lambda pair: pair[0] or EPOCH, reverse=True)
    if suspected and not (recorded_absent and _newer_than(recorded_absent[0][0], suspected[0].when)):
        return PredictorFinding(
            id=pid,
            state=State.UNKNOWN,
            effective=suspected[0].when_raw,
            sources=tuple(run.source(c, None, None, c.status) for c in suspected),
            basis=Basis.SUSPECTED,
        )
    if recorded_absent:
        return recorded_absent[0][1]
    if observed is not None and observed.basis is not Basis.NO_DATA:
        return observed  # a finding Observation that is pending, equivocal, unreadable or too old: says why
    return PredictorFinding(id=pid, state=State.UNKNOWN, basis=Basis.NOT_RECORDED)


KINDS: Mapping[type[Any], Kind] = {
    AntibodyRule: antibody,
    QuantityRule: quantity,
    RatioRule: ratio,
    BmiRule: bmi,
    GradeRule: grade,
    FindingRule: finding,
}
"""The function that evaluates each kind of rule."""


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


def _pairs(tops: list[Item], bottoms: list[Item], gap: timedelta) -> Iterator[tuple[Item, Item]]:
    """For each ``top`` item, the ``bottom`` item of the same specimen, else the one closest in time within
    ``gap`` (never the same part). The bottoms are sorted once and searched by bisection:
    O((tops + bottoms) log bottoms)."""
    by_specimen: dict[str, Item] = {}
    for bottom in bottoms:
        if bottom.specimen is not None:
            by_specimen.setdefault(bottom.specimen, bottom)
    dated = sorted((b for b in bottoms if b.when is not None), key=lambda b: b.when or EPOCH)
    times = [b.when or EPOCH for b in dated]
    for top in tops:
        same = by_specimen.get(top.specimen) if top.specimen is not None else None
        if same is not None and same.part is not top.part:
            yield top, same
            continue
        if top.when is None:
            continue
        index = bisect.bisect_left(times, top.when)
        best: Item | None = None
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


def _closest(tops: list[Item], bottoms: list[Item]) -> tuple[timedelta, Item, Item] | None:
    """The pair of a top and a bottom closest in time (when none paired: the card says how far apart)."""
    best: tuple[timedelta, Item, Item] | None = None
    dated = sorted((b for b in bottoms if b.when is not None), key=lambda b: b.when or EPOCH)
    times = [b.when or EPOCH for b in dated]
    for top in tops:
        if top.when is None:
            continue
        index = bisect.bisect_left(times, top.when)
        for candidate in range(max(0, index - 1), min(len(dated), index + 1)):
            distance = abs(times[candidate] - top.when)
            if best is None or distance < best[0]:
                best = (distance, top, dated[candidate])
    return best
