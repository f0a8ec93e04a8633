"""The store: feedback, issued cards and JWT replay checks in one database shared by every worker and instance."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from cds_service.protocol import FeedbackItem
from cds_service.settings import DatabaseSettings
from cds_service.store.database import (
    _IMMEDIATE,
    _PG_MIGRATION_LOCK,
    AVAILABILITY_ERRORS,
    DEADLINE_MARGIN_S,
    JTI_PURGE_INTERVAL,
    MIGRATION_BUSY_TIMEOUT_MS,
    READINESS_LOG_INTERVAL_S,
    REQUEST_DB_THREADS,
    BoundedCalls,
    DatabaseHealth,
    DatabaseTimeout,
    DatabaseUnavailable,
    Readiness,
    T,
    _head_revision,
    _make_engine,
    _track_forks,
    alembic_config,
    count_database_error,
    normalise_url,
)
from cds_service.store.records import FeedbackResult, IssuedCard, Report, _feedback_row, _utc
from cds_service.store.replays import MemoryReplays
from cds_service.store.report import _build_report, _suggestion_map
from cds_service.store.schema import feedback, issued_cards, seen_jtis
from cds_service.telemetry.sinks import NULL_METRICS, StoreMetrics

logger = logging.getLogger(__name__)


class Store:
    """Feedback and issued cards in one database (a SQLAlchemy URL). Thread-safe; fork-safe.

    ``metrics`` counts its database faults and replay fall-backs: the application's when the factory builds it
    (:class:`~cds_service.telemetry.metrics.Metrics`), else nowhere (the command line)."""

    def __init__(
        self, database_url: str, settings: DatabaseSettings | None = None, *, metrics: StoreMetrics = NULL_METRICS
    ) -> None:
        self.url = normalise_url(database_url)
        self.metrics = metrics
        self.settings = settings or DatabaseSettings()
        self.engine = _make_engine(self.url, self.settings)
        self.dialect = self.engine.dialect.name
        self.writer = self.engine.execution_options(**{_IMMEDIATE: True})
        """The engine for write transactions (on SQLite they take the write lock at BEGIN)."""
        self.deadline = self.settings.statement_timeout_seconds + DEADLINE_MARGIN_S
        """The longest a request waits on the database, whatever the database does."""
        self._next_jti_purge = datetime.min.replace(tzinfo=UTC)
        self._reset_availability()
        _track_forks(self)

    def _reset_availability(self) -> None:
        self.health = DatabaseHealth(replay_fallback=self.settings.replay_fallback, metrics=self.metrics)
        self.jtis = MemoryReplays(self.settings.replay_memory_max_jtis)
        self._calls = BoundedCalls("nxp2-cds-db", REQUEST_DB_THREADS)
        self._probes = BoundedCalls("nxp2-cds-db-probe", 1)
        self._readiness = BoundedCalls("nxp2-cds-db-readiness", 1)
        self._next_readiness_log = 0.0

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages."""
        return self.url.render_as_string(hide_password=True)

    def _after_fork_in_child(self) -> None:
        # The parent's pooled connections must not be used, nor closed, by the child; nor its threads and locks.
        self.engine.dispose(close=False)
        self._reset_availability()

    # -- availability --

    def unavailable(self, message: str = "The database is unavailable; try again later.") -> DatabaseUnavailable:
        return DatabaseUnavailable(self.settings.retry_after_seconds, message)

    def bounded(self, operation: str, function: Callable[[], T]) -> T:
        """``function()`` (database work) within :attr:`deadline`, in a database thread. While the database is known
        to be unavailable it is not tried (a background probe is started instead). Raises
        :class:`DatabaseUnavailable` when the database is down, hung or locked; other errors pass through."""
        if not self.health.available:
            self.probe_in_background()
            raise self.unavailable()
        try:
            result = self._calls.call(function, self.deadline)
        except AVAILABILITY_ERRORS as exc:
            self.health.failed(operation, exc)
            raise self.unavailable() from exc
        self.health.succeeded()
        return result

    def probe_in_background(self) -> None:
        """While the database is marked unavailable, check it (a write transaction, rolled back) in the background,
        at most once a second; success marks it available."""
        if self.health.probe_due():
            self._probes.start(self._probe)

    def _probe(self) -> None:
        try:
            with self.writer.connect() as connection:
                connection.execute(sa.text("SELECT 1"))  # in a write transaction: BEGIN IMMEDIATE on SQLite
                connection.rollback()
        except AVAILABILITY_ERRORS as exc:
            self.health.failed("probe", exc)
        except SQLAlchemyError:
            return
        else:
            self.health.succeeded()

    def readiness(self) -> Readiness:
        """Does the database answer, with the newest schema? Within ``readiness_timeout_seconds`` whatever the
        database does (while an earlier check still waits, at once)."""
        started = time.monotonic()
        try:
            revision = self._readiness.call(self.current_revision, self.settings.readiness_timeout_seconds)
        except (SQLAlchemyError, DatabaseTimeout) as exc:
            reason = "timeout" if isinstance(exc, DatabaseTimeout | sa.exc.TimeoutError) else type(exc).__name__
            if isinstance(exc, AVAILABILITY_ERRORS) and not isinstance(exc, DatabaseTimeout):
                self.health.failed("readiness", exc)  # logged once per outage (slow is not down: requests decide)
            else:
                count_database_error(self.metrics, "readiness", exc)
                if started >= self._next_readiness_log:  # probes come every few seconds: say it once a minute
                    self._next_readiness_log = started + READINESS_LOG_INTERVAL_S
                    logger.warning("database readiness check failed: %s", reason)
            return Readiness(False, False, reason, time.monotonic() - started)
        self.probe_in_background()
        return Readiness(True, revision == self.head_revision(), None, time.monotonic() - started)

    def schema_state(self, timeout: float | None = None) -> Literal["current", "not-current", "unreachable"]:
        """The schema compared with this code's newest revision, or ``unreachable`` when the database does not
        answer (within ``timeout``: by default the connect plus statement timeouts)."""
        wait = timeout if timeout is not None else self.settings.connect_timeout_seconds + self.deadline
        try:
            revision = self._readiness.call(self.current_revision, wait)
        except AVAILABILITY_ERRORS as exc:
            logger.warning("database schema check failed: %s", type(exc).__name__)
            return "unreachable"
        return "current" if revision == self.head_revision() else "not-current"

    def dispose(self) -> None:
        """Close the pooled connections (the store stays usable; new connections are made on demand)."""
        self.engine.dispose()

    # -- schema --

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision. Safe to run concurrently: serialised by an advisory lock on
        PostgreSQL and by SQLite's write lock (taken at BEGIN) on SQLite."""
        with self.engine.connect() as connection:
            if self.dialect == "postgresql":
                self._migrate_postgresql(connection)
            else:
                connection.execution_options(**{_IMMEDIATE: True})
                # no statement bound here: wait for another instance's migration, however long it takes
                driver: Any = connection.connection.driver_connection
                driver.execute(f"PRAGMA busy_timeout = {MIGRATION_BUSY_TIMEOUT_MS}")
                try:
                    with connection.begin():
                        command.upgrade(alembic_config(connection), "head")
                finally:
                    connection.invalidate()  # its busy timeout is not the service's: never pool it

    def _migrate_postgresql(self, connection: Connection) -> None:
        # no statement timeout while waiting for another instance's migration, nor for the migration itself
        connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        connection.commit()
        try:
            with connection.begin():
                connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
                command.upgrade(alembic_config(connection), "head")
        finally:
            try:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK})
                connection.commit()
            except SQLAlchemyError:
                # a session lock lives as long as the session: never return this connection to the pool
                connection.invalidate()

    def current_revision(self) -> str | None:
        """The schema revision of the database (None when it has none)."""
        with self.engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
        return ",".join(sorted(heads)) or None

    @staticmethod
    def head_revision() -> str:
        """The newest schema revision this code knows."""
        return _head_revision()

    def schema_is_current(self) -> bool:
        """The database is at the newest revision (False when it is older, newer, empty or unreachable)."""
        try:
            return self.current_revision() == self.head_revision()
        except SQLAlchemyError as exc:
            logger.warning("database schema check failed: %s", type(exc).__name__)
            return False

    def ping(self) -> bool:
        """The database answers (for readiness probes)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            logger.warning("database ping failed: %s", type(exc).__name__)
            return False
        return True

    # -- writes --

    def insert_ignoring_conflicts(self, table: sa.Table, key: Sequence[str]) -> sa.Insert:
        """``INSERT … ON CONFLICT (key) DO NOTHING`` in this store's dialect."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(key))
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key))

    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem], received_at: datetime) -> FeedbackResult:
        """Store feedback in one transaction, committed before this returns. Identical entries (already stored,
        or repeated within ``items``) are stored once and counted as duplicates."""
        received = _utc(received_at, "received_at")
        rows: dict[str, dict[str, Any]] = {}
        for item in items:
            row = _feedback_row(service_id, item, received)
            rows.setdefault(row["content_hash"], row)
        if not rows:
            return FeedbackResult(stored=0, duplicates=len(items))
        statement = self.insert_ignoring_conflicts(feedback, ["content_hash"]).returning(feedback.c.content_hash)

        def write() -> int:
            with self.writer.begin() as connection:
                return len(connection.execute(statement, list(rows.values())).all())

        try:
            new = self.bounded("feedback", write)
        except DatabaseUnavailable:
            self.health.count_refused()
            raise self.unavailable(
                "The database is unavailable: the feedback was not stored. Send it again later (a repeat is "
                "stored once)."
            ) from None
        result = FeedbackResult(stored=new, duplicates=len(items) - new)
        logger.debug("feedback for %s: %d stored, %d duplicate", service_id, result.stored, result.duplicates)
        return result

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Store issued cards in one transaction; a uuid already stored is ignored."""
        if not cards:
            return
        rows = [c.to_row() for c in cards]
        try:
            with self.writer.begin() as connection:
                connection.execute(self.insert_ignoring_conflicts(issued_cards, ["uuid"]), rows)
        except AVAILABILITY_ERRORS as exc:
            self.health.failed("issued_cards", exc)
            raise
        self.health.succeeded()

    def remember_jti(
        self, issuer: str, jti: str, expires_at: datetime, now: datetime, *, attempt: str | None = None
    ) -> bool:
        """Record a JWT id; True the first time, False when it was already used and has not expired (a replay).
        Committed before it returns, so every worker and instance on this database sees it at once.

        ``attempt`` is the front door's id of the request (``auth.front_door_attempt``): a ``jti`` first recorded
        under the same attempt is that request handed to another worker after the first one died, not a replay.

        While the database is unavailable (down, hung, locked) the check uses this process's memory
        (:class:`MemoryReplays`; counted in ``nxp2_cds_jwt_replay_fallback_total``, logged once per outage) and the
        ids accepted meanwhile are written to the database when it is back; with ``replay_fallback = "refuse"`` it
        raises :class:`DatabaseUnavailable` (503) instead."""
        key = hashlib.sha256(f"{issuer}\n{jti}".encode()).hexdigest()
        moment = _utc(now, "now")
        expires = _utc(expires_at, "expires_at")
        if self.jtis.replayed(key, moment, attempt):
            return False
        try:
            fresh = self.bounded("replay_check", lambda: self._remember_jti_in_database(key, expires, moment, attempt))
        except DatabaseUnavailable:
            if self.settings.replay_fallback == "refuse":
                self.health.count_refused()
                raise
            self.health.count_fallback()
            self.metrics.count_replay_fallback()
            return self.jtis.add(key, expires, moment, unsynced=True, attempt=attempt)
        if fresh:
            self.jtis.add(key, expires, moment, attempt=attempt)
        return fresh

    def _remember_jti_in_database(self, key: str, expires: datetime, moment: datetime, attempt: str | None) -> bool:
        backlog = self.jtis.unsynced(moment)  # accepted from memory during an outage: shared from now on
        statement = self.insert_ignoring_conflicts(seen_jtis, ["key"]).returning(seen_jtis.c.key)
        with self.writer.begin() as connection:
            connection.execute(sa.delete(seen_jtis).where(seen_jtis.c.key == key, seen_jtis.c.expires_at < moment))
            fresh = bool(connection.execute(statement, [{"key": key, "expires_at": expires, "attempt": attempt}]).all())
            if not fresh and attempt is not None:  # the same front-door request, handed to this worker again?
                first = connection.execute(sa.select(seen_jtis.c.attempt).where(seen_jtis.c.key == key)).scalar()
                fresh = first == attempt
            if backlog:
                rows = [{"key": k, "expires_at": e, "attempt": a} for k, e, a in backlog]
                connection.execute(self.insert_ignoring_conflicts(seen_jtis, ["key"]), rows)
            if moment >= self._next_jti_purge:
                connection.execute(sa.delete(seen_jtis).where(seen_jtis.c.expires_at < moment))
                self._next_jti_purge = moment + JTI_PURGE_INTERVAL
        if backlog:
            self.jtis.synced([k for k, _, _ in backlog])
        return fresh

    # -- the report --

    def report(self, service_id: str | None = None) -> Report:
        """Acceptance and override per service, outcome and tier, counted per card over all its feedback; acceptance
        per suggested order (predictor); feedback on cards never issued here apart."""
        counts = sa.select(
            issued_cards.c.service_id, issued_cards.c.outcome, issued_cards.c.tier, sa.func.count().label("n")
        ).group_by(issued_cards.c.service_id, issued_cards.c.outcome, issued_cards.c.tier)
        offered = sa.select(issued_cards.c.service_id, issued_cards.c.suggestions).execution_options(yield_per=2000)
        link = sa.and_(issued_cards.c.uuid == feedback.c.card_uuid, issued_cards.c.service_id == feedback.c.service_id)
        entries = sa.select(
            feedback.c.id,
            feedback.c.service_id,
            feedback.c.card_uuid,
            feedback.c.outcome,
            feedback.c.outcome_timestamp,
            feedback.c.accepted_suggestions,
            feedback.c.override_reason_system,
            feedback.c.override_reason_code,
            feedback.c.override_reason_display,
            issued_cards.c.uuid.label("issued_uuid"),
            issued_cards.c.outcome.label("card_outcome"),
            issued_cards.c.tier.label("card_tier"),
            issued_cards.c.suggestions.label("card_suggestions"),
        ).select_from(feedback.outerjoin(issued_cards, link))
        if service_id is not None:
            counts = counts.where(issued_cards.c.service_id == service_id)
            offered = offered.where(issued_cards.c.service_id == service_id)
            entries = entries.where(feedback.c.service_id == service_id)
        with self.engine.connect() as connection:
            if self.dialect == "postgresql":
                connection.execute(sa.text("SET LOCAL statement_timeout = 0"))  # a report may take its time
            issued = {(r.service_id, r.outcome, r.tier): int(r.n) for r in connection.execute(counts)}
            suggestions: Counter[tuple[str, str | None]] = Counter()
            for r in connection.execute(offered):
                for s in _suggestion_map(r.suggestions).values():
                    suggestions[(r.service_id, s)] += 1
            rows = connection.execute(entries).all()
        return _build_report(service_id, issued, suggestions, rows)
