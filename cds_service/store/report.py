"""The feedback report: acceptance and override per outcome and tier, per suggested order, and what could not be
linked."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cds_service.store.database import _OUTCOME_ORDER, _TIER_ORDER, TOP_REASONS
from cds_service.store.records import ReasonCount, Report, ReportRow, SuggestionRow, UnlinkedRow, UnmatchedSuggestions


def _suggestion_map(stored: Any) -> dict[str, str | None]:
    """An issued card's stored suggestions as {suggestion uuid: predictor id} (empty for a card recorded without)."""
    if not isinstance(stored, list):
        return {}
    return {str(s["uuid"]): s.get("predictor") for s in stored if isinstance(s, dict) and "uuid" in s}


@dataclass
class _Tally:
    cards: set[str] = field(default_factory=set)
    entries: int = 0
    accepted: int = 0
    overridden: int = 0
    accepted_then_overridden: int = 0
    overridden_then_accepted: int = 0
    reasons: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    displays: dict[tuple[str | None, str | None], str | None] = field(default_factory=dict)

    def count_reason(self, row: Any) -> None:
        reason = (row.override_reason_system, row.override_reason_code)
        self.reasons[reason] += 1
        self.displays.setdefault(reason, row.override_reason_display)

    def count_card(self, entries: Sequence[Any]) -> None:
        """One issued card: accepted if any entry accepted it, overridden if any overrode it, and in which order;
        the reason of its latest override."""
        self.cards.add(entries[0].card_uuid)
        self.entries += len(entries)
        outcomes = [e.outcome for e in entries]
        accepts = [i for i, o in enumerate(outcomes) if o == "accepted"]
        overrides = [i for i, o in enumerate(outcomes) if o != "accepted"]
        if accepts:
            self.accepted += 1
        if overrides:
            self.overridden += 1
            self.count_reason(entries[overrides[-1]])
        if accepts and overrides:
            self.accepted_then_overridden += int(accepts[0] < overrides[-1])
            self.overridden_then_accepted += int(overrides[0] < accepts[-1])

    def count_latest(self, entries: Sequence[Any]) -> None:
        """One card never issued here: counted by its latest entry."""
        self.cards.add(entries[0].card_uuid)
        self.entries += len(entries)
        latest = entries[-1]
        if latest.outcome == "accepted":
            self.accepted += 1
        else:
            self.overridden += 1
            self.count_reason(latest)

    def top_reasons(self) -> tuple[ReasonCount, ...]:
        ranked = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0][0] or "\uffff", kv[0][1] or "\uffff"))
        return tuple(ReasonCount(s, c, self.displays.get((s, c)), n) for (s, c), n in ranked[:TOP_REASONS])


_Group = tuple[str, str | None, str]
"""service id, outcome, tier"""


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _build_report(
    service_id: str | None,
    issued: dict[_Group, int],
    offered: Mapping[tuple[str, str | None], int],
    rows: Sequence[Any],
) -> Report:
    by_card: defaultdict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        by_card[(row.service_id, row.card_uuid)].append(row)
    linked: defaultdict[_Group, _Tally] = defaultdict(_Tally)
    unlinked: defaultdict[str, _Tally] = defaultdict(_Tally)
    accepted: Counter[tuple[str, str | None]] = Counter()
    unmatched: defaultdict[str, Counter[str]] = defaultdict(Counter)  # service → card → accepted ids not matched
    for (sid, card_uuid), entries in by_card.items():
        entries.sort(key=lambda r: (r.outcome_timestamp, r.id))
        first = entries[0]
        if first.issued_uuid is None:
            unlinked[sid].count_latest(entries)
            continue
        linked[(sid, first.card_outcome, first.card_tier)].count_card(entries)
        recorded = _suggestion_map(first.card_suggestions)
        ids = {str(s) for e in entries if e.outcome == "accepted" for s in e.accepted_suggestions or ()}
        for suggestion in ids:
            if suggestion in recorded:
                accepted[(sid, recorded[suggestion])] += 1
            else:
                unmatched[sid][card_uuid] += 1

    report_rows = []
    for (sid, outcome, tier), n in issued.items():
        tally = linked.get((sid, outcome, tier), _Tally())
        report_rows.append(
            ReportRow(
                service_id=sid,
                outcome=outcome,
                tier=tier,
                cards_issued=n,
                cards_with_feedback=len(tally.cards),
                accepted=tally.accepted,
                overridden=tally.overridden,
                acceptance_rate=_rate(tally.accepted, n),
                override_rate=_rate(tally.overridden, n),
                top_override_reasons=tally.top_reasons(),
                no_feedback=n - len(tally.cards),
                accepted_then_overridden=tally.accepted_then_overridden,
                overridden_then_accepted=tally.overridden_then_accepted,
            )
        )
    report_rows.sort(key=_row_order)
    suggestion_rows = tuple(
        SuggestionRow(sid, predictor, n, accepted[(sid, predictor)], _rate(accepted[(sid, predictor)], n))
        for (sid, predictor), n in sorted(offered.items(), key=lambda kv: (kv[0][0], kv[0][1] is None, kv[0][1] or ""))
    )
    unmatched_rows = tuple(
        UnmatchedSuggestions(sid, sum(cards.values()), len(cards)) for sid, cards in sorted(unmatched.items())
    )
    unlinked_rows = tuple(
        UnlinkedRow(
            service_id=sid,
            feedback_entries=t.entries,
            cards=len(t.cards),
            accepted=t.accepted,
            overridden=t.overridden,
            top_override_reasons=t.top_reasons(),
        )
        for sid, t in sorted(unlinked.items())
    )
    return Report(datetime.now(UTC), service_id, tuple(report_rows), unlinked_rows, suggestion_rows, unmatched_rows)


def _row_order(row: ReportRow) -> tuple[str, int, str, int, str]:
    outcome_rank = 3 if row.outcome is None else _OUTCOME_ORDER.get(row.outcome, 2)
    return (row.service_id, outcome_rank, row.outcome or "", _TIER_ORDER.get(row.tier, 3), row.tier)
