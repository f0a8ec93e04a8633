"""The feedback report counted per card over all its feedback, and per suggested order (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.dialects import postgresql

from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from cds_service.protocol import FeedbackItem
from cds_service.store.database import alembic_config
from cds_service.store.records import (
    IssuedCard,
    OfferedSuggestion,
    ReasonCount,
    ReportRow,
    SuggestionRow,
    UnlinkedRow,
    UnmatchedSuggestions,
)
from cds_service.store.schema import UtcDateTime
from cds_service.store.store import Store
from tests.builders import AT, condition, obs, patient, qty
from tests.synthetic_patients import nxp2_positive

SERVICE = "nxp2-jdm-risk"
REASON_SYSTEM = "https://example.org/override-reasons"
KB = "wang-2020-anti-nxp2-jdm@1.0.0"
_NAMESPACE = uuid.UUID("5b0c3a51-7c1e-4d8e-9a53-2f1f6d0c9e11")


def chart(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    """An eligible child: anti-NXP2 positive, with a recorded JDM diagnosis, and ``extra``."""
    return [patient(), nxp2_positive(), condition("M33.00"), *extra]


def card_uuid(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


def suggestion_uuid(card: str, predictor: str) -> str:
    """As cds_service.core.cards names a suggestion: uuid5(card uuid, predictor id)."""
    return str(uuid.uuid5(uuid.UUID(card), predictor))


def issued(
    name: str,
    outcome: str | None = "refractory",
    tier: str = "warning",
    offers: Sequence[str] = (),
    service: str = SERVICE,
) -> IssuedCard:
    """An issued card named ``name`` that offered an order for each predictor in ``offers``."""
    uid = card_uuid(name)
    suggestions = tuple(OfferedSuggestion(suggestion_uuid(uid, p), p) for p in offers)
    return IssuedCard(uid, service, outcome, tier, ("edema",), KB, AT, suggestions)


def accepted(name: str, minute: int = 0, suggestions: Sequence[str] = ("x",)) -> FeedbackItem:
    """Accepted feedback on card ``name`` at 12:``minute``, naming the suggestions of these predictors (or ids)."""
    uid = card_uuid(name)
    ids = [suggestion_uuid(uid, s) if s != "x" else "x" for s in suggestions]
    return FeedbackItem.model_validate(
        {
            "card": uid,
            "outcome": "accepted",
            "outcomeTimestamp": (AT + timedelta(minutes=minute)).isoformat(),
            "acceptedSuggestions": [{"id": i} for i in ids],
        }
    )


def overridden(name: str, minute: int = 0, reason: str = "not-relevant") -> FeedbackItem:
    """Feedback overriding card ``name`` at 12:``minute`` with ``reason``."""
    return FeedbackItem.model_validate(
        {
            "card": card_uuid(name),
            "outcome": "overridden",
            "outcomeTimestamp": (AT + timedelta(minutes=minute)).isoformat(),
            "overrideReason": {"reason": {"system": REASON_SYSTEM, "code": reason, "display": reason}},
        }
    )


def only_row(store: Store) -> ReportRow:
    (row,) = store.report().rows
    return row


def counts(row: ReportRow) -> dict[str, Any]:
    return {
        "issued": row.cards_issued,
        "with_feedback": row.cards_with_feedback,
        "no_feedback": row.no_feedback,
        "accepted": row.accepted,
        "overridden": row.overridden,
        "accepted_then_overridden": row.accepted_then_overridden,
        "overridden_then_accepted": row.overridden_then_accepted,
    }


# --- per card ----------------------------------------------------------------------------------------------------


def test_accepted_then_overridden_counts_as_accepted_and_as_overridden_once_each(store: Store) -> None:
    """A card accepted at 12:00 and overridden at 12:05 is one accepted card and one overridden card, and one card
    accepted then overridden: acceptance and override rates are both 100 %."""
    store.record_cards([issued("c")])
    store.record_feedback(SERVICE, [accepted("c", 0), overridden("c", 5)], AT)
    row = only_row(store)
    assert counts(row) == {
        "issued": 1,
        "with_feedback": 1,
        "no_feedback": 0,
        "accepted": 1,
        "overridden": 1,
        "accepted_then_overridden": 1,
        "overridden_then_accepted": 0,
    }
    assert (row.acceptance_rate, row.override_rate) == (1.0, 1.0)


def test_overridden_then_accepted_is_counted_in_that_order(store: Store) -> None:
    """A card overridden at 12:00 and accepted at 12:05 counts as overridden then accepted, not accepted then
    overridden."""
    store.record_cards([issued("c")])
    store.record_feedback(SERVICE, [accepted("c", 5), overridden("c", 0)], AT)
    row = only_row(store)
    assert (row.accepted, row.overridden, row.accepted_then_overridden, row.overridden_then_accepted) == (1, 1, 0, 1)


def test_order_is_by_outcome_timestamp_not_arrival(store: Store) -> None:
    """Feedback sent later but stamped earlier comes first: an override stamped 12:00 that arrives after an
    acceptance stamped 12:05 makes the card overridden then accepted."""
    store.record_cards([issued("c")])
    store.record_feedback(SERVICE, [accepted("c", 5)], AT)
    store.record_feedback(SERVICE, [overridden("c", 0)], AT + timedelta(hours=1))
    row = only_row(store)
    assert (row.accepted_then_overridden, row.overridden_then_accepted) == (0, 1)


def test_accepted_overridden_then_accepted_again_is_in_both_orders(store: Store) -> None:
    """Accepted, overridden, accepted again: the card is once accepted then overridden and once overridden then
    accepted, and still one accepted and one overridden card."""
    store.record_cards([issued("c")])
    store.record_feedback(SERVICE, [accepted("c", 0), overridden("c", 5), accepted("c", 10, ("y",))], AT)
    assert counts(only_row(store)) == {
        "issued": 1,
        "with_feedback": 1,
        "no_feedback": 0,
        "accepted": 1,
        "overridden": 1,
        "accepted_then_overridden": 1,
        "overridden_then_accepted": 1,
    }


def test_two_feedback_rows_on_one_card_do_not_double_the_denominator(store: Store) -> None:
    """Two cards issued, one of them accepted twice (12:00 and 12:05): one accepted card of two issued, 50 %, and
    one card with feedback, not two."""
    store.record_cards([issued("a"), issued("b")])
    store.record_feedback(SERVICE, [accepted("a", 0), accepted("a", 5, ("y",))], AT)
    row = only_row(store)
    assert (row.cards_issued, row.cards_with_feedback, row.accepted, row.acceptance_rate) == (2, 1, 1, 0.5)


def test_a_card_overridden_twice_is_one_overridden_card(store: Store) -> None:
    """Two overrides of one card count as one overridden card (override rate 100 % of one card)."""
    store.record_cards([issued("c")])
    store.record_feedback(SERVICE, [overridden("c", 0), overridden("c", 5, "already-known")], AT)
    row = only_row(store)
    assert (row.cards_with_feedback, row.overridden, row.override_rate, row.accepted) == (1, 1, 1.0, 0)


def test_cards_issued_without_feedback_count_as_no_feedback(store: Store) -> None:
    """Three cards issued, one with feedback: two count as no feedback, and neither as accepted nor overridden."""
    store.record_cards([issued("a"), issued("b"), issued("c")])
    store.record_feedback(SERVICE, [overridden("a")], AT)
    row = only_row(store)
    assert (row.cards_issued, row.no_feedback, row.accepted, row.overridden) == (3, 2, 0, 1)


def test_override_reasons_count_each_card_once_by_its_latest_override(store: Store) -> None:
    """Card a overridden 'not-relevant' then 'already-known'; card b overridden 'not-relevant' then accepted:
    one card for each reason (a by its latest override; b's override counts although it was accepted later)."""
    store.record_cards([issued("a"), issued("b")])
    store.record_feedback(
        SERVICE,
        [overridden("a", 0, "not-relevant"), overridden("a", 5, "already-known"), overridden("b", 0), accepted("b", 5)],
        AT,
    )
    assert set(only_row(store).top_override_reasons) == {
        ReasonCount(REASON_SYSTEM, "already-known", "already-known", 1),
        ReasonCount(REASON_SYSTEM, "not-relevant", "not-relevant", 1),
    }


def test_feedback_counts_in_its_cards_outcome_and_tier(store: Store) -> None:
    """Each card's feedback counts in the row of that card's outcome and tier only."""
    store.record_cards([issued("r"), issued("g", "gi_perforation_death", "critical")])
    store.record_feedback(SERVICE, [accepted("r"), overridden("g")], AT)
    got = {(r.outcome, r.tier): (r.accepted, r.overridden) for r in store.report().rows}
    assert got == {("refractory", "warning"): (1, 0), ("gi_perforation_death", "critical"): (0, 1)}


# --- per suggestion ----------------------------------------------------------------------------------------------


def test_suggestion_acceptance_is_counted_per_predictor(store: Store) -> None:
    """Cards a and b both offer ferritin and ANA orders; a's ferritin order is accepted, b's ANA and ferritin orders
    too: ferritin offered 2 accepted 2, ANA offered 2 accepted 1."""
    offers = ("ferritin_gt_200", "ana_positive")
    store.record_cards([issued("a", offers=offers), issued("b", offers=offers)])
    store.record_feedback(
        SERVICE, [accepted("a", suggestions=("ferritin_gt_200",)), accepted("b", suggestions=offers)], AT
    )
    assert store.report().suggestions == (
        SuggestionRow(SERVICE, "ana_positive", 2, 1, 0.5),
        SuggestionRow(SERVICE, "ferritin_gt_200", 2, 2, 1.0),
    )


def test_an_accepted_suggestion_still_counts_after_the_card_is_overridden(store: Store) -> None:
    """The ferritin order of a card accepted at 12:00 and overridden at 12:05 counts as accepted."""
    store.record_cards([issued("c", offers=("ferritin_gt_200",))])
    store.record_feedback(SERVICE, [accepted("c", 0, ("ferritin_gt_200",)), overridden("c", 5)], AT)
    assert store.report().suggestions == (SuggestionRow(SERVICE, "ferritin_gt_200", 1, 1, 1.0),)


def test_a_suggestion_accepted_twice_counts_once(store: Store) -> None:
    """Two acceptances of one card naming the same order count one accepted suggestion of the one offered."""
    store.record_cards([issued("c", offers=("ferritin_gt_200",))])
    store.record_feedback(SERVICE, [accepted("c", 0, ("ferritin_gt_200",)), accepted("c", 5, ("ferritin_gt_200",))], AT)
    assert store.report().suggestions == (SuggestionRow(SERVICE, "ferritin_gt_200", 1, 1, 1.0),)


def test_suggestions_never_accepted_have_a_zero_rate(store: Store) -> None:
    """An order offered on an overridden card and on a card without feedback: offered 2, accepted 0, 0 %."""
    store.record_cards([issued("a", offers=("ana_positive",)), issued("b", offers=("ana_positive",))])
    store.record_feedback(SERVICE, [overridden("a")], AT)
    assert store.report().suggestions == (SuggestionRow(SERVICE, "ana_positive", 2, 0, 0.0),)


def test_an_accepted_id_the_card_did_not_offer_is_unmatched(store: Store) -> None:
    """An accepted suggestion id that is not among the card's recorded suggestions is counted as unmatched, not
    under any predictor."""
    store.record_cards([issued("c", offers=("ana_positive",))])
    store.record_feedback(SERVICE, [accepted("c", suggestions=("not-a-suggestion-of-this-card",))], AT)
    report = store.report()
    assert report.suggestions == (SuggestionRow(SERVICE, "ana_positive", 1, 0, 0.0),)
    assert report.unmatched_suggestions == (UnmatchedSuggestions(SERVICE, 1, 1),)


def test_suggestions_of_a_real_card_are_reported_by_predictor(store: Store, engine: Engine) -> None:
    """Cards built by the engine and recorded through IssuedCard.from_card(): accepting one suggestion of the first
    card counts it as accepted for the predictor whose order it is."""
    resources = chart(condition("R60.0"))
    cards = engine.cards(
        engine.assess(resources, patient_id="pat-1", at=AT), CardContext(hook_instance="hook-1", patient_id="pat-1")
    )
    store.record_cards([IssuedCard.from_card(c, service_id=SERVICE, issued_at=AT) for c in cards])
    first = next(c for c in cards if c.get("suggestions"))
    chosen = first["suggestions"][0]["uuid"]
    predictor = next(
        p["id"]
        for p in first["extension"]["nxp2-cds.assessment"]["predictors"]
        if suggestion_uuid(first["uuid"], p["id"]) == chosen
    )
    item = {
        "card": first["uuid"],
        "outcome": "accepted",
        "outcomeTimestamp": AT.isoformat(),
        "acceptedSuggestions": [{"id": chosen}],
    }
    store.record_feedback(SERVICE, [FeedbackItem.model_validate(item)], AT)
    rows = {s.predictor: (s.offered, s.accepted) for s in store.report().suggestions}
    offered = sum(len(c.get("suggestions", ())) for c in cards)
    assert rows[predictor][1] == 1
    assert sum(n for n, _ in rows.values()) == offered
    assert sum(a for _, a in rows.values()) == 1
    assert None not in rows


def test_issued_card_keeps_each_suggestion_and_the_predictor_it_orders(engine: Engine) -> None:
    """IssuedCard.from_card() keeps every suggestion uuid of a real card, with the predictor whose order (the
    ServiceRequest's code text) it carries."""
    resources = chart(obs("2276-4", **qty(400, "ng/mL")))
    cards = engine.cards(
        engine.assess(resources, patient_id="pat-1", at=AT), CardContext(hook_instance="hook-1", patient_id="pat-1")
    )
    with_suggestions = [c for c in cards if c.get("suggestions")]
    assert with_suggestions
    for card in with_suggestions:
        kept = IssuedCard.from_card(card, service_id=SERVICE, issued_at=AT).suggestions
        assert [s.uuid for s in kept] == [s["uuid"] for s in card["suggestions"]]
        for offered, suggestion in zip(kept, card["suggestions"], strict=True):
            assert offered.predictor is not None
            order = engine.knowledge.predictors[offered.predictor].order
            assert order is not None
            assert suggestion["actions"][0]["resource"]["code"]["text"] == order.text


def test_a_card_without_suggestions_keeps_none(engine: Engine) -> None:
    """A card whose JSON has no suggestions is kept with an empty tuple of suggestions."""
    resources = chart(condition("R60.0"))
    card = engine.cards(
        engine.assess(resources, patient_id="pat-1", at=AT), CardContext(hook_instance="hook-1", patient_id="pat-1")
    )[0]
    bare = {k: v for k, v in card.items() if k != "suggestions"}
    assert IssuedCard.from_card(bare, service_id=SERVICE, issued_at=AT).suggestions == ()


def test_the_suggestion_report_can_be_limited_to_one_service(store: Store) -> None:
    """report(service_id) counts only that service's suggestions."""
    store.record_cards(
        [issued("mine", offers=("ana_positive",)), issued("theirs", offers=("ana_positive",), service="other")]
    )
    assert store.report(SERVICE).suggestions == (SuggestionRow(SERVICE, "ana_positive", 1, 0, 0.0),)


# --- unlinked and old rows ---------------------------------------------------------------------------------------


def test_unlinked_feedback_is_still_counted_by_its_latest_entry(store: Store) -> None:
    """Feedback on a card never issued here stays in the unlinked section, counted as before by its latest entry
    (accepted then overridden: one overridden card), and in no row and no suggestion count."""
    store.record_cards([issued("known", offers=("ana_positive",))])
    store.record_feedback(SERVICE, [accepted("ghost", 0), overridden("ghost", 5, "too-many-alerts")], AT)
    report = store.report()
    assert report.unlinked == (
        UnlinkedRow(SERVICE, 2, 1, 0, 1, (ReasonCount(REASON_SYSTEM, "too-many-alerts", "too-many-alerts", 1),)),
    )
    assert (report.rows[0].cards_with_feedback, report.unmatched_suggestions) == (0, ())
    assert report.suggestions == (SuggestionRow(SERVICE, "ana_positive", 1, 0, 0.0),)


def test_cards_recorded_before_revision_0003_still_report(database_url: str) -> None:
    """A card recorded by revision 0002 (no suggestions column) and then migrated: it counts in its row per card,
    its accepted suggestion is unmatched, and it is left out of the suggestion counts."""
    store = Store(database_url)
    try:
        with store.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0002")
        old = sa.Table(
            "issued_cards",
            sa.MetaData(),
            sa.Column("uuid", sa.String(128)),
            sa.Column("service_id", sa.String(128)),
            sa.Column("outcome", sa.String(64)),
            sa.Column("tier", sa.String(16)),
            sa.Column("present", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
            sa.Column("knowledge_base", sa.String(256)),
            sa.Column("issued_at", UtcDateTime()),
        )
        uid = card_uuid("old")
        row = {"uuid": uid, "service_id": SERVICE, "outcome": "refractory", "tier": "warning", "present": ["edema"]}
        with store.engine.begin() as connection:
            connection.execute(sa.insert(old), [row | {"knowledge_base": KB, "issued_at": AT}])
        store.migrate()
        store.record_cards([issued("new", offers=("ana_positive",))])
        store.record_feedback(SERVICE, [accepted("old", 0, ("ferritin_gt_200",)), overridden("old", 5)], AT)
        report = store.report()
        row_counts = counts(report.rows[0])
        assert (row_counts["issued"], row_counts["accepted"], row_counts["accepted_then_overridden"]) == (2, 1, 1)
        assert report.unmatched_suggestions == (UnmatchedSuggestions(SERVICE, 1, 1),)
        assert report.suggestions == (SuggestionRow(SERVICE, "ana_positive", 1, 0, 0.0),)
    finally:
        store.dispose()


# --- JSON --------------------------------------------------------------------------------------------------------


def test_report_json_keeps_its_keys_and_adds_the_new_counts(store: Store) -> None:
    """to_json() keeps every key it had and adds no_feedback, the two orders, the counting rules, suggestions and
    unmatched suggestions."""
    store.record_cards([issued("c", offers=("ana_positive",)), issued("d")])
    store.record_feedback(SERVICE, [accepted("c", 0, ("ana_positive",)), overridden("c", 5)], AT)
    document = store.report().to_json()
    assert document["rate_denominator"] == "cards_issued"
    assert (document["card_counting"], document["override_reasons_counting"]) == (
        "any_feedback",
        "latest_override_per_card",
    )
    (row,) = document["rows"]
    assert row | {"top_override_reasons": []} == {
        "service_id": SERVICE,
        "outcome": "refractory",
        "tier": "warning",
        "cards_issued": 2,
        "cards_with_feedback": 1,
        "no_feedback": 1,
        "accepted": 1,
        "overridden": 1,
        "accepted_then_overridden": 1,
        "overridden_then_accepted": 0,
        "acceptance_rate": 0.5,
        "override_rate": 0.5,
        "top_override_reasons": [],
    }
    assert document["suggestions"] == [
        {"service_id": SERVICE, "predictor": "ana_positive", "offered": 1, "accepted": 1, "acceptance_rate": 1.0}
    ]
    assert (document["unmatched_suggestions"], document["unlinked"]) == ([], [])


def test_entries_of_the_same_instant_are_ordered_by_arrival(store: Store) -> None:
    """An acceptance and an override stamped the same instant, the acceptance stored first: accepted then
    overridden."""
    store.record_cards([issued("c")])
    store.record_feedback(SERVICE, [accepted("c", 0)], AT)
    store.record_feedback(SERVICE, [overridden("c", 0)], AT)
    row = only_row(store)
    assert (row.accepted_then_overridden, row.overridden_then_accepted) == (1, 0)
