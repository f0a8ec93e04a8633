"""What is stored and reported, as values: issued cards and the suggestions they offered, feedback rows and their
content hash, the report's rows."""

from __future__ import annotations

import hashlib
import uuid as uuid_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cds_service.contracts import EXTENSION_KEY
from cds_service.protocol import FeedbackItem
from cds_service.store.database import _HASH_VERSION

# --- values ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferedSuggestion:
    """A suggestion an issued card offered: its uuid (what feedback's ``acceptedSuggestions`` name) and the predictor
    whose test it orders (None when the card does not say)."""

    uuid: str
    predictor: str | None


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """What is kept of a card the service issued: enough to link feedback to it, nothing about the patient."""

    uuid: str
    service_id: str
    outcome: str | None
    """``refractory``, ``gi_perforation_death``, or None for the screening card."""
    tier: str
    present: tuple[str, ...]
    """Ids of the predictors present when the card was issued."""
    knowledge_base: str
    """``id@version``."""
    issued_at: datetime
    suggestions: tuple[OfferedSuggestion, ...] = ()
    """The suggestions the card offered (empty: none). Stored since revision 0003; rows recorded before it hold NULL
    there, and their cards are left out of the per-suggestion report."""

    def __post_init__(self) -> None:
        if self.issued_at.tzinfo is None or self.issued_at.utcoffset() is None:
            raise ValueError("issued_at must be timezone-aware")

    def to_row(self) -> dict[str, Any]:
        """The ``issued_cards`` row (also what the spool keeps, as JSON)."""
        return {
            "uuid": self.uuid,
            "service_id": self.service_id,
            "outcome": self.outcome,
            "tier": self.tier,
            "present": list(self.present),
            "knowledge_base": self.knowledge_base,
            "issued_at": self.issued_at,
            "suggestions": [{"uuid": s.uuid, "predictor": s.predictor} for s in self.suggestions],
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> IssuedCard:
        """The inverse of :meth:`to_row`; ``issued_at`` may be an ISO-8601 string. Raises KeyError, TypeError or
        ValueError for anything else."""
        issued_at = row["issued_at"]
        if isinstance(issued_at, str):
            issued_at = datetime.fromisoformat(issued_at)
        if not isinstance(issued_at, datetime):
            raise TypeError("issued_at must be a datetime")
        return cls(
            uuid=str(row["uuid"]),
            service_id=str(row["service_id"]),
            outcome=None if row["outcome"] is None else str(row["outcome"]),
            tier=str(row["tier"]),
            present=tuple(str(p) for p in row["present"]),
            knowledge_base=str(row["knowledge_base"]),
            issued_at=issued_at,
            suggestions=tuple(
                OfferedSuggestion(str(s["uuid"]), None if s["predictor"] is None else str(s["predictor"]))
                for s in row.get("suggestions") or ()
            ),
        )

    @classmethod
    def from_card(cls, card: Mapping[str, Any], *, service_id: str, issued_at: datetime) -> IssuedCard:
        """Read a card built by :mod:`cds_service.core.cards` (its ``nxp2-cds.assessment`` extension)."""
        extension = card["extension"][EXTENSION_KEY]
        kb = extension["knowledgeBase"]
        predictors = extension.get("predictors", ())
        present = tuple(p["id"] for p in predictors if p.get("state") == "present")
        return cls(
            uuid=card["uuid"],
            service_id=service_id,
            outcome=extension.get("outcome"),
            tier=extension["tier"],
            present=present,
            knowledge_base=f"{kb['id']}@{kb['version']}",
            issued_at=issued_at,
            suggestions=_offered_suggestions(card, [p["id"] for p in predictors]),
        )


def _offered_suggestions(card: Mapping[str, Any], predictor_ids: Sequence[str]) -> tuple[OfferedSuggestion, ...]:
    """The card's suggestions, each with the predictor it orders: :mod:`cds_service.core.cards` names a suggestion
    ``uuid5(card uuid, predictor id)``, so the predictor is the one of the card's predictors whose uuid5 matches."""
    suggestions = card.get("suggestions") or ()
    if not suggestions:
        return ()
    by_uuid: dict[str, str] = {}
    try:
        namespace = uuid_module.UUID(str(card["uuid"]))
    except ValueError:
        pass  # not a uuid: no suggestion uuid derives from it
    else:
        by_uuid = {str(uuid_module.uuid5(namespace, p)): p for p in predictor_ids}
    return tuple(OfferedSuggestion(str(s["uuid"]), by_uuid.get(str(s["uuid"]))) for s in suggestions if "uuid" in s)


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What :meth:`Store.record_feedback` did: ``stored`` new rows; ``duplicates`` were already stored (or repeated
    within the request) and were not stored again."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """An override reason (its coding; all None when none was given) and how many cards were overridden with it."""

    system: str | None
    code: str | None
    display: str | None
    count: int


@dataclass(frozen=True, slots=True)
class ReportRow:
    """Cards of one service, outcome and tier. A card counts once in each count, however much feedback it has:

    - ``accepted``: some feedback accepted the card, at any time; ``overridden``: some feedback overrode it. A card
      can be both: ``accepted_then_overridden`` are those with an acceptance before an override,
      ``overridden_then_accepted`` those with an override before an acceptance (in ``outcomeTimestamp`` order;
      entries of the same instant in the order they arrived). Accepted, overridden, accepted again: in both.
    - ``no_feedback``: cards issued that no feedback names (``cards_issued - cards_with_feedback``).
    - Rates are of the cards issued (None when none was).
    - ``top_override_reasons``: each overridden card counts once, with the reason of its latest override.
    """

    service_id: str
    outcome: str | None
    tier: str
    cards_issued: int
    cards_with_feedback: int
    accepted: int
    overridden: int
    acceptance_rate: float | None
    override_rate: float | None
    top_override_reasons: tuple[ReasonCount, ...]
    no_feedback: int = 0
    accepted_then_overridden: int = 0
    overridden_then_accepted: int = 0


@dataclass(frozen=True, slots=True)
class SuggestionRow:
    """The suggestions (orders) of one service's issued cards that order one predictor's test.

    ``offered``: suggestions on the cards issued (a card offers a predictor's order at most once); ``accepted``: those
    whose uuid some ``accepted`` feedback on their card names, at any time (even if the card was overridden later),
    each once. The rate is of the suggestions offered. ``predictor`` is None for suggestions whose predictor the card
    did not show. Cards recorded before revision 0003 kept no suggestions and are not counted here.
    """

    service_id: str
    predictor: str | None
    offered: int
    accepted: int
    acceptance_rate: float | None


@dataclass(frozen=True, slots=True)
class UnmatchedSuggestions:
    """Accepted suggestion ids, on one service's issued cards, that are not among the suggestions recorded with the
    card: the card was recorded before suggestions were kept (revision 0003), or it did not offer that id."""

    service_id: str
    accepted: int
    cards: int


@dataclass(frozen=True, slots=True)
class UnlinkedRow:
    """Feedback, for one service, on cards this database never issued (or issued under another service). A card
    counts once, by its latest feedback (``outcomeTimestamp``)."""

    service_id: str
    feedback_entries: int
    cards: int
    accepted: int
    overridden: int
    top_override_reasons: tuple[ReasonCount, ...]


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: datetime
    service_id: str | None
    rows: tuple[ReportRow, ...]
    unlinked: tuple[UnlinkedRow, ...]
    suggestions: tuple[SuggestionRow, ...] = ()
    unmatched_suggestions: tuple[UnmatchedSuggestions, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (snake_case keys, ISO-8601 UTC time, rates as fractions)."""

        def reasons(items: tuple[ReasonCount, ...]) -> list[dict[str, Any]]:
            return [{"system": r.system, "code": r.code, "display": r.display, "count": r.count} for r in items]

        return {
            "generated_at": _iso(self.generated_at),
            "service_id": self.service_id,
            "rate_denominator": "cards_issued",
            "card_counting": "any_feedback",
            "override_reasons_counting": "latest_override_per_card",
            "unlinked_counting": "latest_feedback_per_card",
            "rows": [
                {
                    "service_id": r.service_id,
                    "outcome": r.outcome,
                    "tier": r.tier,
                    "cards_issued": r.cards_issued,
                    "cards_with_feedback": r.cards_with_feedback,
                    "no_feedback": r.no_feedback,
                    "accepted": r.accepted,
                    "overridden": r.overridden,
                    "accepted_then_overridden": r.accepted_then_overridden,
                    "overridden_then_accepted": r.overridden_then_accepted,
                    "acceptance_rate": r.acceptance_rate,
                    "override_rate": r.override_rate,
                    "top_override_reasons": reasons(r.top_override_reasons),
                }
                for r in self.rows
            ],
            "suggestions": [
                {
                    "service_id": s.service_id,
                    "predictor": s.predictor,
                    "offered": s.offered,
                    "accepted": s.accepted,
                    "acceptance_rate": s.acceptance_rate,
                }
                for s in self.suggestions
            ],
            "unmatched_suggestions": [
                {"service_id": u.service_id, "accepted": u.accepted, "cards": u.cards}
                for u in self.unmatched_suggestions
            ],
            "unlinked": [
                {
                    "service_id": u.service_id,
                    "feedback_entries": u.feedback_entries,
                    "cards": u.cards,
                    "accepted": u.accepted,
                    "overridden": u.overridden,
                    "top_override_reasons": reasons(u.top_override_reasons),
                }
                for u in self.unlinked
            ],
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def feedback_hash(service_id: str, item: FeedbackItem) -> str:
    """SHA-256 of what makes feedback the same: service, card, outcome, the instant of the outcome, the accepted
    suggestion ids (as a set), the override reason's system and code, and the comment."""
    reason = item.overrideReason
    coding = reason.reason if reason is not None else None
    content = [
        _HASH_VERSION,
        service_id,
        item.card,
        item.outcome,
        _iso(item.outcomeTimestamp),
        sorted({s.id for s in item.acceptedSuggestions or ()}),
        [coding.system, coding.code] if coding is not None else None,
        reason.userComment if reason is not None else None,
    ]
    return hashlib.sha256(orjson.dumps(content)).hexdigest()


def _feedback_row(service_id: str, item: FeedbackItem, received_at: datetime) -> dict[str, Any]:
    reason = item.overrideReason
    coding = reason.reason if reason is not None else None
    return {
        "content_hash": feedback_hash(service_id, item),
        "service_id": service_id,
        "card_uuid": item.card,
        "outcome": item.outcome,
        "outcome_timestamp": item.outcomeTimestamp,
        "accepted_suggestions": [s.id for s in item.acceptedSuggestions] if item.acceptedSuggestions else None,
        "override_reason_system": coding.system if coding is not None else None,
        "override_reason_code": coding.code if coding is not None else None,
        "override_reason_display": coding.display if coding is not None else None,
        "override_comment": reason.userComment if reason is not None else None,
        "received_at": received_at,
    }
