"""Durable storage of clinicians' feedback on cards, and of the cards the service issues.

One relational database holds both (SQLite by default, PostgreSQL in production). Its schema belongs to the Alembic
migrations in ``cds_service/migrations``; :meth:`Store.migrate` applies them, and nothing here creates tables any
other way. Later tables (a ``seen_jtis`` replay store shared by all workers, say) arrive as further revisions and
reuse :meth:`Store.insert_ignoring_conflicts` and :attr:`Store.writer`.

- **Feedback** is written synchronously, in one transaction committed before :meth:`Store.record_feedback`
  returns. Identical repeats are stored once: each row carries a SHA-256 of its content under a unique constraint,
  inserted with the dialect's ``INSERT … ON CONFLICT DO NOTHING``.
- **Issued cards** are only a record, kept off the hot path: :class:`CardRecorder` queues them (bounded, never
  blocking) and a background thread writes them in batches. Only what links feedback to a card is kept (uuid,
  service, outcome, tier, the ids of the present predictors, the suggestions offered with the predictor each one
  orders, the knowledge base, the time): no patient identifier, no value.

Nothing here logs request content: log lines carry counts, service ids and exception class names only.

Fork safety (gunicorn): a :class:`Store` forgets its pooled connections in a forked child, and a
:class:`CardRecorder` starts its writer thread lazily, in the process that submits, with a fresh queue after a fork.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid as uuid_module
import weakref
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from .protocol import FeedbackItem

logger = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS: Final = 5000
POSTGRES_CONNECT_TIMEOUT_S: Final = 5
_PG_MIGRATION_LOCK: Final = 0x6E78_7032_6D69_6772  # "nxp2migr": one key for every instance of the service
_IMMEDIATE: Final = "nxp2_cds_sqlite_immediate"
_HASH_VERSION: Final = 1
_OUTCOME_ORDER: Final = {"refractory": 0, "gi_perforation_death": 1}
_TIER_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}
TOP_REASONS: Final = 3
JTI_PURGE_INTERVAL: Final = timedelta(minutes=5)


class StoreError(ValueError):
    """The database URL is unusable (unparseable, unsupported dialect, missing driver). Never shows a password."""


# --- schema (must match the latest migration; tests/test_feedback_store.py checks it) --------------------------


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out. Stored as UTC (SQLite keeps no offset, so UTC is implied)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

issued_cards = sa.Table(
    "issued_cards",
    metadata,
    sa.Column("uuid", sa.String(128), nullable=False),
    sa.Column("service_id", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(64), nullable=True),
    sa.Column("tier", sa.String(16), nullable=False),
    sa.Column("present", _JSON, nullable=False),
    sa.Column("knowledge_base", sa.String(256), nullable=False),
    sa.Column("issued_at", UtcDateTime(), nullable=False),
    sa.Column("suggestions", _JSON, nullable=True),
    sa.PrimaryKeyConstraint("uuid", name="pk_issued_cards"),
    sa.Index("ix_issued_cards_outcome_tier", "outcome", "tier"),
    sa.Index("ix_issued_cards_issued_at", "issued_at"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("service_id", sa.String(128), nullable=False),
    sa.Column("card_uuid", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", UtcDateTime(), nullable=False),
    sa.Column("accepted_suggestions", _JSON, nullable=True),
    sa.Column("override_reason_system", sa.String(1024), nullable=True),
    sa.Column("override_reason_code", sa.String(256), nullable=True),
    sa.Column("override_reason_display", sa.String(1024), nullable=True),
    sa.Column("override_comment", sa.Text(), nullable=True),
    sa.Column("received_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    sa.UniqueConstraint("content_hash", name="uq_feedback_content_hash"),
    sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_feedback_outcome"),
    sa.Index("ix_feedback_card_uuid", "card_uuid"),
)

seen_jtis = sa.Table(
    "seen_jtis",
    metadata,
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("key", name="pk_seen_jtis"),
    sa.Index("ix_seen_jtis_expires_at", "expires_at"),
)
"""JWT ids already accepted, shared by every worker and instance on this database: ``key`` is a SHA-256 of the
issuer and the ``jti`` (nothing else about the token is kept), ``expires_at`` when the token (plus leeway) expires."""


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

    @classmethod
    def from_card(cls, card: Mapping[str, Any], *, service_id: str, issued_at: datetime) -> IssuedCard:
        """Read a card built by :mod:`cds_service.cards` (its ``nxp2-cds.assessment`` extension)."""
        extension = card["extension"]["nxp2-cds.assessment"]
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
    """The card's suggestions, each with the predictor it orders: :mod:`cds_service.cards` names a suggestion
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


# --- fork awareness ----------------------------------------------------------------------------------------------

_fork_aware: weakref.WeakSet[Store | CardRecorder] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    for obj in list(_fork_aware):
        obj._after_fork_in_child()


def _track_forks(obj: Store | CardRecorder) -> None:
    """Reset ``obj`` in forked children. The hook is registered on first use, not on import."""
    global _fork_hook_registered
    with _fork_hook_lock:
        if not _fork_hook_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True
        _fork_aware.add(obj)


# --- the store ---------------------------------------------------------------------------------------------------


def normalise_url(database_url: str) -> URL:
    """Parse a database URL; ``postgresql://`` and ``postgres://`` mean psycopg 3. Raises :class:`StoreError`."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise StoreError("database_url is not a valid database URL") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"database_url: {url.get_backend_name()!r} is not supported (SQLite or PostgreSQL)")
    return url


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not the sqlite3 module, begins transactions (see _sqlite_on_begin): DDL becomes transactional.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _sqlite_wal(cursor)
    finally:
        cursor.close()


def _sqlite_wal(cursor: Any) -> None:
    """Put the file in WAL mode (it stays so). Switching can fail at once with "database is locked" while another
    connection holds a lock, without waiting the busy timeout: retry within that time."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode not in ("wal", "memory"):
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _make_engine(url: URL) -> Engine:
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            database = url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url)
            sa.event.listen(engine, "connect", _sqlite_on_connect)
            sa.event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError:
        raise StoreError(f"database_url: no SQLAlchemy dialect {url.drivername!r}") from None
    except ImportError:
        raise StoreError(f"database_url: the database driver for {url.drivername!r} is not installed") from None
    except OSError as exc:
        raise StoreError(f"database_url: cannot create the database folder: {exc.strerror or exc}") from None


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration without an ini file; ``connection`` is what env.py migrates."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "rev_%%(rev)s_%%(slug)s")  # module names must not start with a digit
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class Store:
    """Feedback and issued cards in one database (a SQLAlchemy URL). Thread-safe; fork-safe."""

    def __init__(self, database_url: str) -> None:
        self.url = normalise_url(database_url)
        self.engine = _make_engine(self.url)
        self.dialect = self.engine.dialect.name
        self.writer = self.engine.execution_options(**{_IMMEDIATE: True})
        """The engine for write transactions (on SQLite they take the write lock at BEGIN)."""
        self._next_jti_purge = datetime.min.replace(tzinfo=UTC)
        _track_forks(self)

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages."""
        return self.url.render_as_string(hide_password=True)

    def _after_fork_in_child(self) -> None:
        # The parent's pooled connections must not be used, nor closed, by the child.
        self.engine.dispose(close=False)

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
                with connection.begin():
                    command.upgrade(alembic_config(connection), "head")

    def _migrate_postgresql(self, connection: Connection) -> None:
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        connection.commit()
        try:
            with connection.begin():
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
        return ",".join(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))

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
        with self.writer.begin() as connection:
            new = len(connection.execute(statement, list(rows.values())).all())
        result = FeedbackResult(stored=new, duplicates=len(items) - new)
        logger.debug("feedback for %s: %d stored, %d duplicate", service_id, result.stored, result.duplicates)
        return result

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Store issued cards in one transaction; a uuid already stored is ignored."""
        if not cards:
            return
        rows = [
            {
                "uuid": c.uuid,
                "service_id": c.service_id,
                "outcome": c.outcome,
                "tier": c.tier,
                "present": list(c.present),
                "knowledge_base": c.knowledge_base,
                "issued_at": c.issued_at,
                "suggestions": [{"uuid": s.uuid, "predictor": s.predictor} for s in c.suggestions],
            }
            for c in cards
        ]
        with self.writer.begin() as connection:
            connection.execute(self.insert_ignoring_conflicts(issued_cards, ["uuid"]), rows)

    def remember_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Record a JWT id; True the first time, False when it was already used and has not expired (a replay).
        Committed before it returns, so every worker and instance on this database sees it at once."""
        key = hashlib.sha256(f"{issuer}\n{jti}".encode()).hexdigest()
        moment = _utc(now, "now")
        statement = self.insert_ignoring_conflicts(seen_jtis, ["key"]).returning(seen_jtis.c.key)
        with self.writer.begin() as connection:
            connection.execute(sa.delete(seen_jtis).where(seen_jtis.c.key == key, seen_jtis.c.expires_at < moment))
            fresh = connection.execute(statement, [{"key": key, "expires_at": _utc(expires_at, "expires_at")}]).all()
            if moment >= self._next_jti_purge:
                connection.execute(sa.delete(seen_jtis).where(seen_jtis.c.expires_at < moment))
                self._next_jti_purge = moment + JTI_PURGE_INTERVAL
        return bool(fresh)

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
            issued = {(r.service_id, r.outcome, r.tier): int(r.n) for r in connection.execute(counts)}
            suggestions: Counter[tuple[str, str | None]] = Counter()
            for r in connection.execute(offered):
                for s in _suggestion_map(r.suggestions).values():
                    suggestions[(r.service_id, s)] += 1
            rows = connection.execute(entries).all()
        return _build_report(service_id, issued, suggestions, rows)


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


# --- the background card writer ----------------------------------------------------------------------------------


class CardSink(Protocol):
    def record_cards(self, cards: Sequence[IssuedCard]) -> None: ...


@dataclass(eq=False)
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP: Final = object()


class CardRecorder:
    """Records issued cards off the hot path: :meth:`submit` only enqueues (bounded; when full the cards are
    dropped and counted), a daemon thread writes batches of up to ``batch_size`` cards, at least every
    ``flush_interval`` seconds while cards wait. The thread starts on the first submit in each process (so a
    recorder made before gunicorn forks works in every worker); queued cards are flushed at exit.

    Counters (per process): ``written``, ``dropped`` (queue full, or after :meth:`close`), ``failed`` (their batch
    raised; logged by exception class only)."""

    def __init__(
        self,
        sink: CardSink,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("max_queue and batch_size must be positive, flush_interval > 0")
        self._sink = sink
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._closed = False
        self._reset()
        _track_forks(self)
        atexit.register(self._flush_at_exit)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[object] = queue.Queue(self._max_queue)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._written = 0
        self._dropped = 0
        self._failed = 0
        self._dropped_reported = 0

    def _after_fork_in_child(self) -> None:
        # The parent's queue, lock and thread are not ours: their locks may have been held at the fork.
        self._reset()

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def failed(self) -> int:
        return self._failed

    def submit(self, cards: Sequence[IssuedCard]) -> None:
        """Queue cards for writing; never blocks, never raises for a full queue or a stopped recorder."""
        if not cards:
            return
        if self._pid != os.getpid():
            self._reset()
        if self._closed:
            self._count_dropped(len(cards))
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        put = self._queue.put_nowait
        for index, card in enumerate(cards):
            try:
                put(card)
            except queue.Full:
                self._count_dropped(len(cards) - index)
                return

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def _start(self) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="nxp2-cds-card-writer", daemon=True
            )
            self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every card submitted before this call is written (or failed). False on timeout."""
        if self._pid != os.getpid():
            self._reset()
        if self._thread is None:
            return True  # nothing was submitted in this process
        if not self._thread.is_alive():
            if self._closed:
                return self._queue.empty()
            self._start()
        deadline = time.monotonic() + timeout
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=max(0.0, timeout))
        except queue.Full:
            return False
        return marker.done.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread; later submits are dropped (and counted)."""
        atexit.unregister(self._flush_at_exit)
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None or not thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(0.0, timeout))
        except queue.Full:
            return
        thread.join(max(0.0, deadline - time.monotonic()))

    def _flush_at_exit(self) -> None:
        self.flush(timeout=5.0)

    def _run(self, source: queue.Queue[object]) -> None:
        batch: list[IssuedCard] = []
        deadline = 0.0
        while True:
            try:
                # with cards waiting, wake up in time to write them; with none, sleep until something comes
                item = source.get(timeout=max(0.0, deadline - time.monotonic())) if batch else source.get()
            except queue.Empty:
                self._write(batch)
                batch = []
                continue
            if isinstance(item, IssuedCard):
                if not batch:
                    deadline = time.monotonic() + self._flush_interval
                batch.append(item)
                if len(batch) >= self._batch_size:
                    self._write(batch)
                    batch = []
            elif isinstance(item, _Flush):
                self._write(batch)
                batch = []
                item.done.set()
            else:  # _STOP
                self._write(batch)
                return

    def _write(self, batch: list[IssuedCard]) -> None:
        if batch:
            try:
                self._sink.record_cards(batch)
            except Exception as exc:
                with self._lock:
                    self._failed += len(batch)
                logger.error("issued cards: a batch of %d could not be written (%s)", len(batch), type(exc).__name__)
            else:
                with self._lock:
                    self._written += len(batch)
        with self._lock:
            newly = self._dropped - self._dropped_reported
            self._dropped_reported = self._dropped
            total = self._dropped
        if newly:
            logger.warning("issued cards: queue full, %d dropped (%d since start)", newly, total)
