"""Pass 2, windows and decisions: a predictor's candidates inside its look-back window, newest first, and the
one rule that turns lazily read options into a finding.

- The newest decisive option wins; at equal times, meeting the predictor wins, then severity. With
  ``on_conflict = "unknown"`` (anti-NXP2), results of the same date that disagree are "conflicting", unknown.
- A value outside the plausible range is flagged ("implausible"), never used.
- With no decisive option the finding is unknown and says why: pending, equivocal, unpaired (with the gap),
  unreadable (with the value as written), older than the look-back, or no result.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import groupby

from ..dates import days_before
from ..model import Basis, PredictorFinding, SkipReason, State
from .run import EPOCH, Item, Option, Reading, Run, newest_first
from .written import raw_value, value_text


def window(
    run: Run, concepts: Sequence[str], lookback_days: int | None, rtype: str = "Observation"
) -> tuple[list[Item], Item | None]:
    """Items of ``concepts`` (of resource type ``rtype``) inside the look-back window, newest first, and the
    newest one outside it."""
    inside: list[Item] = []
    stale: Item | None = None
    since = days_before(run.at, lookback_days) if lookback_days is not None else None
    for concept in concepts:
        for item in run.items.get(concept, ()):
            if item.rtype != rtype:
                continue
            if since is not None:
                if item.when is None:
                    run.skip(item.resource, SkipReason.NO_DATE)
                    continue
                if item.when < since:
                    run.skip(item.resource, SkipReason.OUTSIDE_LOOKBACK)
                    if stale is None or (stale.when is not None and item.when > stale.when):
                        stale = item
                    continue
            inside.append(item)
    inside.sort(key=newest_first)
    return inside, stale


def decide(
    run: Run,
    predictor_id: str,
    options: list[Option],
    *,
    unit: str | None,
    stale: Item | None,
    lookback_days: int | None,
    concepts: Sequence[str] = (),
    on_conflict: str = "present",
    unpaired: tuple[timedelta, Item, Item] | None = None,
) -> PredictorFinding:
    """Newest decisive option wins; at equal times, meeting the predictor wins, then severity (or, with
    ``on_conflict = "unknown"``, results of the same date that disagree are conflicting). With no decisive
    option the finding is unknown, and says why."""
    options.sort(key=lambda o: o.when or EPOCH, reverse=True)
    by_date = on_conflict == "unknown"
    equivocal: list[Reading] = []
    unreadable: list[Option] = []
    for _, group in groupby(options, key=lambda o: (o.when.date() if o.when else None) if by_date else o.when):
        decisive: list[Reading] = []
        implausible: list[Reading] = []
        for option in group:
            reading = option.read()
            if reading is None:
                unreadable.append(option)
            elif reading.basis is Basis.IMPLAUSIBLE:
                implausible.append(reading)
                run.use(reading)
            elif reading.decisive is None:
                equivocal.append(reading)
                run.use(reading)
            else:
                decisive.append(reading)
        if decisive:
            met = [r for r in decisive if r.decisive]
            for reading in decisive:
                run.use(reading)
            if by_date and met and len(met) < len(decisive):
                return PredictorFinding(
                    id=predictor_id,
                    state=State.UNKNOWN,
                    effective=latest_raw([i for r in decisive for i in r.items]),
                    sources=tuple(s for r in decisive for s in r.sources),
                    basis=Basis.CONFLICTING,
                )
            pool = met or decisive
            chosen = max(pool, key=lambda r: r.severity)
            return PredictorFinding(
                id=predictor_id,
                state=State.PRESENT if chosen.decisive else State.ABSENT,
                value=chosen.value,
                unit=chosen.unit,
                effective=chosen.items[0].when_raw if len(chosen.items) == 1 else latest_raw(chosen.items),
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
                effective=latest_raw(flagged.items),
                sources=flagged.sources,
                basis=Basis.IMPLAUSIBLE,
            )
    pending = pending_items(run, concepts, lookback_days)
    if pending and (not equivocal or _newer(pending[0], equivocal[0].items)):
        return PredictorFinding(
            id=predictor_id,
            state=State.UNKNOWN,
            effective=pending[0].when_raw,
            sources=tuple(run.source(i, None, None) for i in pending[:3]),
            basis=Basis.PENDING,
            basis_detail={"status": str(pending[0].resource.get("status"))},
        )
    if equivocal:
        newest = equivocal[0]
        return PredictorFinding(
            id=predictor_id,
            state=State.UNKNOWN,
            value=newest.value,
            unit=newest.unit,
            effective=latest_raw(newest.items),
            sources=tuple(s for r in equivocal for s in r.sources),
            basis=Basis.EQUIVOCAL,
        )
    if unpaired is not None:
        gap, first, second = unpaired
        return PredictorFinding(
            id=predictor_id,
            state=State.UNKNOWN,
            effective=later_raw(first, second),
            sources=(run.source(first, None, None), run.source(second, None, None)),
            basis=Basis.UNPAIRED,
            basis_detail={"gap_minutes": str(int(gap.total_seconds() // 60))},
        )
    if unreadable:
        option = unreadable[0]
        items = option.items
        parts = map(run.full_part, items)  # as sent: an invalid resource may hold a value[x] nobody pruned
        written = next((t for t in (value_text(p) or raw_value(p) for p in parts) if t), "")
        return PredictorFinding(
            id=predictor_id,
            state=State.UNKNOWN,
            unit=unit,
            effective=option.when_raw,
            sources=tuple(run.source(i, None, None) for i in items),
            basis=Basis.UNREADABLE,
            basis_detail={"value": written[:80]},
        )
    if stale is not None:
        return PredictorFinding(
            id=predictor_id,
            state=State.UNKNOWN,
            effective=stale.when_raw,
            sources=(run.source(stale, None, None),),
            basis=Basis.OUTSIDE_LOOKBACK,
            basis_detail={"lookback_days": str(lookback_days)},
        )
    return PredictorFinding(id=predictor_id, state=State.UNKNOWN, unit=unit, basis=Basis.NO_DATA)


def pending_items(run: Run, concepts: Sequence[str], lookback_days: int | None) -> list[Item]:
    """Preliminary / registered results of ``concepts`` inside the look-back window, newest first."""
    since = days_before(run.at, lookback_days) if lookback_days is not None else None
    found = [
        item
        for concept in concepts
        for item in run.pending.get(concept, ())
        if since is None or (item.when is not None and item.when >= since)
    ]
    found.sort(key=newest_first)
    return found


def _newer(item: Item, items: Sequence[Item]) -> bool:
    """Is ``item`` dated later than every dated item of ``items``?"""
    if item.when is None:
        return False
    return all(other.when is None or item.when > other.when for other in items)


def later(a: Item, b: Item) -> datetime | None:
    """The later of two items' times (either, when one is undated)."""
    if a.when is None or b.when is None:
        return a.when or b.when
    return max(a.when, b.when)


def later_raw(a: Item, b: Item) -> str | None:
    """The later of two items' dates as recorded."""
    if a.when is None or b.when is None:
        return a.when_raw or b.when_raw
    return a.when_raw if a.when >= b.when else b.when_raw


def latest_raw(items: Sequence[Item]) -> str | None:
    """The newest of the items' dates as recorded (the first item's, when none is dated)."""
    dated = [i for i in items if i.when is not None]
    if not dated:
        return items[0].when_raw if items else None
    return max(dated, key=lambda i: i.when or EPOCH).when_raw
