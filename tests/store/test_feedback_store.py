"""The feedback store (SQLite and PostgreSQL) and the background recorder of issued cards."""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from cds_service.protocol import FeedbackItem
from cds_service.store.database import StoreError
from cds_service.store.recorder import CardRecorder
from cds_service.store.records import FeedbackResult, IssuedCard, ReasonCount
from cds_service.store.schema import feedback, metadata
from cds_service.store.store import Store
from tests.builders import AT, condition, obs, patient, qty
from tests.synthetic_patients import nxp2_positive

SERVICE = "nxp2-jdm-risk"
REASON_SYSTEM = "https://example.org/override-reasons"
WRITER_THREAD = "nxp2-cds-card-writer"


def item(
    card: str = "card-1",
    outcome: str = "overridden",
    at: str = "2026-11-24T12:00:00Z",
    reason: str | None = "not-relevant",
    comment: str | None = None,
    accepted: Sequence[str] = ("suggestion-1",),
) -> FeedbackItem:
    document: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": at}
    if outcome == "accepted":
        document["acceptedSuggestions"] = [{"id": s} for s in accepted]
    elif reason is not None or comment is not None:
        override: dict[str, Any] = {}
        if reason is not None:
            override["reason"] = {"system": REASON_SYSTEM, "code": reason, "display": reason.replace("-", " ")}
        if comment is not None:
            override["userComment"] = comment
        document["overrideReason"] = override
    return FeedbackItem.model_validate(document)


def card(uuid: str, outcome: str | None = "refractory", tier: str = "warning", service: str = SERVICE) -> IssuedCard:
    return IssuedCard(uuid, service, outcome, tier, ("edema",), "wang-2020-anti-nxp2-jdm@1.0.0", AT)


@pytest.fixture
def fresh_engine(store: Store) -> Iterator[sa.Engine]:
    """A new engine on the store's database, sharing nothing with the store."""
    engine = sa.create_engine(store.url)
    yield engine
    engine.dispose()


def rows(engine: sa.Engine, query: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(query)).all())


def writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == WRITER_THREAD)


# --- schema ------------------------------------------------------------------------------------------------------


def test_migrate_creates_the_schema(database_url: str) -> None:
    """migrate() creates the issued_cards and feedback tables and stamps the newest revision."""
    store = Store(database_url)
    try:
        store.migrate()
        tables = set(sa.inspect(store.engine).get_table_names())
        assert {"issued_cards", "feedback", "alembic_version"} <= tables
        assert store.current_revision() == Store.head_revision()
    finally:
        store.dispose()


def test_migrate_is_idempotent(store: Store) -> None:
    """Migrating an up-to-date database again changes nothing and keeps the data."""
    store.record_feedback(SERVICE, [item()], AT)
    store.migrate()
    assert store.current_revision() == Store.head_revision()
    assert store.record_feedback(SERVICE, [item()], AT) == FeedbackResult(stored=0, duplicates=1)


def test_concurrent_migrations_do_not_race(database_url: str) -> None:
    """Several instances migrating the same empty database at once all succeed (lock on PostgreSQL, SQLite's
    write lock on SQLite)."""
    stores = [Store(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(store: Store) -> None:
        barrier.wait()
        try:
            store.migrate()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert all(s.schema_is_current() for s in stores)
    finally:
        for s in stores:
            s.dispose()


def test_migrations_match_the_table_definitions(store: Store) -> None:
    """The tables the migrations create are the ones cds_service.store.schema declares (no autogenerate diff)."""
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_schema_is_current_only_after_migrate(database_url: str) -> None:
    """schema_is_current() is False on an empty database and True once it is migrated."""
    store = Store(database_url)
    try:
        before = store.schema_is_current()
        store.migrate()
        assert (before, store.schema_is_current()) == (False, True)
    finally:
        store.dispose()


def test_sqlite_database_uses_wal_in_a_created_folder(sqlite_url: str) -> None:
    """A SQLite file is created with its missing parent folder, in WAL mode (several workers share it)."""
    store = Store(sqlite_url)
    try:
        store.migrate()
        with store.engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        assert mode == "wal"
    finally:
        store.dispose()


def test_ping_is_true_for_a_reachable_database(store: Store) -> None:
    """ping() answers True when the database can be queried."""
    assert store.ping() is True


def test_ping_is_false_for_an_unreachable_database() -> None:
    """ping() answers False, without raising, when the server refuses connections."""
    store = Store("postgresql://postgres@127.0.0.1:1/nothing")
    try:
        assert store.ping() is False
    finally:
        store.dispose()


@pytest.mark.parametrize("url", ["nosuchdb://user:s3cret@host/db", "not a url s3cret", "mysql://u:s3cret@h/db"])
def test_unusable_url_is_refused_without_its_password(url: str) -> None:
    """An unparseable URL, an unknown or unsupported dialect raise StoreError, whose message hides the password."""
    with pytest.raises(StoreError) as raised:
        Store(url)
    assert "s3cret" not in str(raised.value)


# --- feedback ----------------------------------------------------------------------------------------------------


def test_recorded_feedback_is_in_the_database(store: Store, fresh_engine: sa.Engine) -> None:
    """record_feedback() has committed when it returns: another engine reads the row with plain SQL."""
    store.record_feedback(SERVICE, [item(card="card-9", comment="seen by the team")], AT)
    found = rows(
        fresh_engine, "SELECT service_id, card_uuid, outcome, override_reason_code, override_comment FROM feedback"
    )
    assert found == [(SERVICE, "card-9", "overridden", "not-relevant", "seen by the team")]


def test_identical_feedback_is_stored_once(store: Store, fresh_engine: sa.Engine) -> None:
    """The same feedback posted twice is one row; the second call reports a duplicate."""
    first = store.record_feedback(SERVICE, [item(comment="x")], AT)
    second = store.record_feedback(SERVICE, [item(comment="x")], AT + timedelta(minutes=5))
    assert (first, second) == (FeedbackResult(1, 0), FeedbackResult(0, 1))
    assert rows(fresh_engine, "SELECT count(*) FROM feedback") == [(1,)]


def test_identical_entries_in_one_request_are_stored_once(store: Store) -> None:
    """Two identical entries in one request are stored once and counted as one duplicate."""
    assert store.record_feedback(SERVICE, [item(), item()], AT) == FeedbackResult(stored=1, duplicates=1)


def test_a_request_mixing_known_and_new_entries_stores_only_the_new(store: Store, fresh_engine: sa.Engine) -> None:
    """In a request with entries already stored and new ones, only the new are stored; both are counted."""
    store.record_feedback(SERVICE, [item(card="a"), item(card="b")], AT)
    result = store.record_feedback(SERVICE, [item(card="a"), item(card="c"), item(card="b"), item(card="d")], AT)
    assert result == FeedbackResult(stored=2, duplicates=2)
    assert rows(fresh_engine, "SELECT card_uuid FROM feedback ORDER BY card_uuid") == [("a",), ("b",), ("c",), ("d",)]


def test_the_same_instant_in_another_offset_is_a_duplicate(store: Store) -> None:
    """outcomeTimestamp is compared as an instant: 13:00+01:00 is the same feedback as 12:00Z."""
    store.record_feedback(SERVICE, [item(at="2026-11-24T12:00:00Z")], AT)
    assert store.record_feedback(SERVICE, [item(at="2026-11-24T13:00:00+01:00")], AT).duplicates == 1


def test_different_outcome_timestamps_are_two_rows(store: Store, fresh_engine: sa.Engine) -> None:
    """Feedback that differs only in outcomeTimestamp is stored twice."""
    store.record_feedback(SERVICE, [item(at="2026-11-24T12:00:00Z")], AT)
    store.record_feedback(SERVICE, [item(at="2026-11-24T12:00:01Z")], AT)
    assert rows(fresh_engine, "SELECT count(*) FROM feedback") == [(2,)]


def test_a_different_comment_is_new_feedback(store: Store) -> None:
    """Feedback that differs only in the override comment is stored as new."""
    store.record_feedback(SERVICE, [item(comment="one")], AT)
    assert store.record_feedback(SERVICE, [item(comment="two")], AT) == FeedbackResult(stored=1, duplicates=0)


def test_timestamps_are_read_back_as_utc(store: Store) -> None:
    """Times given in any offset come back as the same instant, in UTC."""
    store.record_feedback(
        SERVICE, [item(at="2026-11-24T13:30:00+01:00")], datetime.fromisoformat("2026-11-24T14:00+02:00")
    )
    with store.engine.connect() as connection:
        (outcome_at, received_at) = connection.execute(
            sa.select(feedback.c.outcome_timestamp, feedback.c.received_at)
        ).one()
    assert (outcome_at, received_at) == (
        datetime(2026, 11, 24, 12, 30, tzinfo=UTC),
        datetime(2026, 11, 24, 12, tzinfo=UTC),
    )
    assert outcome_at.utcoffset() == received_at.utcoffset() == timedelta(0)


def test_naive_received_at_is_refused(store: Store) -> None:
    """A reception time without a UTC offset is a programming error (ValueError), not stored."""
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_feedback(SERVICE, [item()], datetime(2026, 11, 24, 12))


def test_feedback_content_is_not_logged(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """Recording feedback logs counts at most: never the comment, the card or the reason."""
    caplog.set_level(logging.DEBUG, logger="cds_service")
    store.record_feedback(SERVICE, [item(card="card-secret", comment="patient John Doe")], AT)
    assert "John Doe" not in caplog.text
    assert "card-secret" not in caplog.text


# --- issued cards and the report ---------------------------------------------------------------------------------


def test_a_repeated_card_uuid_is_stored_once(store: Store, fresh_engine: sa.Engine) -> None:
    """record_cards() ignores a card whose uuid is already stored (a retried hook call)."""
    store.record_cards([card("c-1")])
    store.record_cards([card("c-1"), card("c-2")])
    assert rows(fresh_engine, "SELECT uuid FROM issued_cards ORDER BY uuid") == [("c-1",), ("c-2",)]


def test_recorded_cards_link_feedback_in_the_report(store: Store) -> None:
    """Feedback on a recorded card counts in that card's outcome and tier, not as unlinked."""
    store.record_cards([card("c-1", "gi_perforation_death", "critical")])
    store.record_feedback(SERVICE, [item(card="c-1", outcome="accepted")], AT)
    report = store.report()
    (row,) = report.rows
    assert (row.outcome, row.tier, row.cards_issued, row.cards_with_feedback, row.accepted) == (
        "gi_perforation_death",
        "critical",
        1,
        1,
        1,
    )
    assert report.unlinked == ()


def test_report_rates_per_outcome_and_tier(store: Store) -> None:
    """Hand-computed, each card once over all its feedback: refractory/warning has 4 cards (accepted; overridden
    'not-relevant'; overridden 'not-relevant' then accepted later; no feedback): 2 accepted, 2 overridden of 4 → 50 %
    and 50 %, 'not-relevant' on 2 cards. gi/critical has 2 cards, both overridden 'already-known' → 0 % and 100 %.
    The screening card has no feedback → 0 % and 0 %."""
    store.record_cards(
        [
            *(card(f"r-{n}", "refractory", "warning") for n in range(1, 5)),
            card("g-1", "gi_perforation_death", "critical"),
            card("g-2", "gi_perforation_death", "critical"),
            card("s-1", None, "info"),
        ]
    )
    store.record_feedback(
        SERVICE,
        [
            item(card="r-1", outcome="accepted"),
            item(card="r-2", reason="not-relevant"),
            item(card="r-3", reason="not-relevant", at="2026-11-24T12:00:00Z"),
            item(card="r-3", outcome="accepted", at="2026-11-24T12:05:00Z"),
            item(card="g-1", reason="already-known"),
            item(card="g-2", reason="already-known", comment="discussed"),
        ],
        AT,
    )
    got = {
        (r.outcome, r.tier): (
            r.cards_issued,
            r.cards_with_feedback,
            r.accepted,
            r.overridden,
            r.acceptance_rate,
            r.override_rate,
            r.top_override_reasons,
        )
        for r in store.report().rows
    }
    assert got == {
        ("refractory", "warning"): (
            4,
            3,
            2,
            2,
            0.5,
            0.5,
            (ReasonCount(REASON_SYSTEM, "not-relevant", "not relevant", 2),),
        ),
        ("gi_perforation_death", "critical"): (
            2,
            2,
            0,
            2,
            0.0,
            1.0,
            (ReasonCount(REASON_SYSTEM, "already-known", "already known", 2),),
        ),
        (None, "info"): (1, 0, 0, 0, 0.0, 0.0, ()),
    }


def test_report_rows_are_ordered_by_outcome_then_tier(store: Store) -> None:
    """Rows come refractory, then GI perforation/death, then screening; critical before warning before info."""
    store.record_cards([card("a", None, "info"), card("b", "gi_perforation_death", "warning"), card("c")])
    store.record_cards([card("d", "gi_perforation_death", "critical")])
    order = [(r.outcome, r.tier) for r in store.report().rows]
    assert order == [
        ("refractory", "warning"),
        ("gi_perforation_death", "critical"),
        ("gi_perforation_death", "warning"),
        (None, "info"),
    ]


def test_unlinked_feedback_is_reported(store: Store) -> None:
    """Feedback on cards this database never issued is reported apart, with its counts and reasons."""
    store.record_cards([card("known")])
    store.record_feedback(
        SERVICE,
        [
            item(card="ghost-1", reason="too-many-alerts"),
            item(card="ghost-1", reason="too-many-alerts", at="2026-11-24T11:00:00Z"),
            item(card="ghost-2", outcome="accepted"),
        ],
        AT,
    )
    report = store.report()
    (unlinked,) = report.unlinked
    assert (unlinked.service_id, unlinked.feedback_entries, unlinked.cards, unlinked.accepted, unlinked.overridden) == (
        SERVICE,
        3,
        2,
        1,
        1,
    )
    assert [r.code for r in unlinked.top_override_reasons] == ["too-many-alerts"]
    assert report.rows[0].cards_with_feedback == 0


def test_report_can_be_limited_to_one_service(store: Store) -> None:
    """report(service_id) leaves out other services' cards and feedback."""
    store.record_cards([card("mine"), card("theirs", service="other-service")])
    store.record_feedback("other-service", [item(card="elsewhere")], AT)
    report = store.report(SERVICE)
    assert [r.service_id for r in report.rows] == [SERVICE]
    assert report.unlinked == ()


def test_report_json_has_rates_and_unlinked(store: Store) -> None:
    """Report.to_json() is JSON-ready: rows with rates as fractions (every key the report has always had), and the
    unlinked feedback."""
    store.record_cards([card("c-1")])
    store.record_feedback(SERVICE, [item(card="c-1", outcome="accepted"), item(card="nowhere")], AT)
    document = store.report().to_json()
    original_keys = (
        "service_id",
        "outcome",
        "tier",
        "cards_issued",
        "cards_with_feedback",
        "accepted",
        "overridden",
        "acceptance_rate",
        "override_rate",
    )
    assert {k: document["rows"][0][k] for k in original_keys} | {"top_override_reasons": []} == {
        "service_id": SERVICE,
        "outcome": "refractory",
        "tier": "warning",
        "cards_issued": 1,
        "cards_with_feedback": 1,
        "accepted": 1,
        "overridden": 0,
        "acceptance_rate": 1.0,
        "override_rate": 0.0,
        "top_override_reasons": [],
    }
    assert document["unlinked"][0]["feedback_entries"] == 1


def test_issued_card_is_read_from_a_real_card(engine: Engine) -> None:
    """IssuedCard.from_card() keeps the uuid, outcome, tier, present predictors and knowledge base of a card."""
    resources = [
        patient(),
        nxp2_positive(),
        condition("M33.00"),
        condition("R60.0"),
        obs("2276-4", **qty(400, "ng/mL")),
    ]
    assessment = engine.assess(resources, patient_id="pat-1", at=AT)
    cards = engine.cards(assessment, CardContext(hook_instance="hook-1", patient_id="pat-1"))
    issued = [IssuedCard.from_card(c, service_id=SERVICE, issued_at=AT) for c in cards]
    source = engine.knowledge.source
    assert [(i.uuid, i.tier) for i in issued] == [(c["uuid"], c["indicator"]) for c in cards]
    assert {i.outcome for i in issued} == {"refractory", "gi_perforation_death"}
    assert all("anti_nxp2_positive" in i.present and "edema" in i.present for i in issued)
    assert {i.knowledge_base for i in issued} == {f"{source.id}@{source.version}"}


# --- the background recorder -------------------------------------------------------------------------------------


class BlockingStore(Store):
    """A store whose card writes wait until released (a slow disk)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url)
        self.entered = threading.Event()
        self.release = threading.Event()

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        self.entered.set()
        self.release.wait(60)
        super().record_cards(cards)


@pytest.fixture
def recorder(store: Store) -> Iterator[CardRecorder]:
    result = CardRecorder(store)
    yield result
    result.close()


def test_recorder_writes_submitted_cards_after_flush(
    store: Store, recorder: CardRecorder, fresh_engine: sa.Engine
) -> None:
    """Submitted cards are in the database once flush() returns True."""
    recorder.submit([card("c-1"), card("c-2")])
    assert recorder.flush(30) is True
    assert rows(fresh_engine, "SELECT uuid FROM issued_cards ORDER BY uuid") == [("c-1",), ("c-2",)]
    assert (recorder.written, recorder.dropped, recorder.failed) == (2, 0, 0)


def test_recorder_starts_its_thread_on_first_submit(store: Store) -> None:
    """Creating a recorder starts no thread (safe before a fork); the first submit starts one."""
    before = writer_threads()
    recorder = CardRecorder(store)
    try:
        created = writer_threads()
        recorder.submit([card("c-1")])
        assert (created, writer_threads()) == (before, before + 1)
    finally:
        recorder.close()


def test_submit_never_blocks_and_counts_drops_when_the_queue_is_full(sqlite_url: str) -> None:
    """While the writer is stuck on a slow write, submit returns at once; cards beyond the queue's room are dropped
    and counted, the others are written later."""
    store = BlockingStore(sqlite_url)
    store.migrate()
    recorder = CardRecorder(store, max_queue=2, batch_size=1)
    try:
        recorder.submit([card("first")])
        assert store.entered.wait(30)
        submitter = threading.Thread(target=recorder.submit, args=([card(f"c-{n}") for n in range(5)],))
        submitter.start()
        submitter.join(30)
        returned = not submitter.is_alive()
        store.release.set()
        assert recorder.flush(30)
        assert (returned, recorder.written, recorder.dropped) == (True, 3, 3)
    finally:
        store.release.set()
        recorder.close()
        store.dispose()


def test_a_failed_batch_is_counted_not_raised(sqlite_url: str) -> None:
    """A database error while writing a batch (here: no tables) is counted in ``failed``; submit and flush do not
    raise, and the writer goes on."""
    store = Store(sqlite_url)  # not migrated
    recorder = CardRecorder(store)
    try:
        recorder.submit([card("c-1"), card("c-2")])
        assert recorder.flush(30) is True
        recorder.submit([card("c-3")])
        assert recorder.flush(30) is True
        assert (recorder.written, recorder.failed) == (0, 3)
    finally:
        recorder.close()
        store.dispose()


def test_a_failed_batch_is_logged_without_card_data(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The error log of a failed batch names the count and the exception class, not the cards."""
    store = Store(sqlite_url)  # not migrated
    recorder = CardRecorder(store)
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.store"):
            recorder.submit([card("card-uuid-123")])
            recorder.flush(30)
        assert "batch of 1 could not be written (OperationalError)" in caplog.text
        assert "card-uuid-123" not in caplog.text
    finally:
        recorder.close()
        store.dispose()


def test_closed_recorder_writes_what_was_queued_and_drops_later_cards(store: Store, fresh_engine: sa.Engine) -> None:
    """close() writes the queued cards and stops; cards submitted afterwards are dropped and counted."""
    recorder = CardRecorder(store)
    recorder.submit([card("before")])
    recorder.close()
    recorder.submit([card("after")])
    assert rows(fresh_engine, "SELECT uuid FROM issued_cards") == [("before",)]
    assert (recorder.written, recorder.dropped) == (1, 1)


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_recorder_works_after_fork(store: Store, recorder: CardRecorder, fresh_engine: sa.Engine) -> None:
    """A recorder (and its store) in use before a fork works in the child: the child starts its own writer and
    connections, and its cards are written; the parent's recorder goes on working."""
    recorder.submit([card("parent-before")])
    assert recorder.flush(30)

    def child() -> None:
        recorder.submit([card("child")])
        ok = recorder.flush(30) and recorder.written == 1 and recorder.failed == 0
        sys.exit(0 if ok else 3)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    recorder.submit([card("parent-after")])
    assert recorder.flush(30)
    assert process.exitcode == 0
    assert rows(fresh_engine, "SELECT uuid FROM issued_cards ORDER BY uuid") == [
        ("child",),
        ("parent-after",),
        ("parent-before",),
    ]
