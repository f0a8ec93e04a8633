"""Durable storage of clinicians' feedback on cards, and of the cards the service issues.

One relational database holds both (SQLite by default, PostgreSQL in production). Its schema belongs to the Alembic
migrations in ``cds_service/store/migrations``; :meth:`Store.migrate` applies them, and nothing here creates tables any
other way. Later tables (a ``seen_jtis`` replay store shared by all workers, say) arrive as further revisions and
reuse :meth:`Store.insert_ignoring_conflicts` and :attr:`Store.writer`.

- **Feedback** is written synchronously, in one transaction committed before :meth:`Store.record_feedback`
  returns. Identical repeats are stored once: each row carries a SHA-256 of its content under a unique constraint,
  inserted with the dialect's ``INSERT … ON CONFLICT DO NOTHING``.
- **Issued cards** are only a record, kept off the hot path: :class:`CardRecorder` queues them (bounded, never
  blocking) and a background thread writes them in batches; the service uses its subclass
  :class:`cds_service.store.spool.SpoolingCardRecorder`, which keeps them in a durable local spool until they are
  written.
  Only what links feedback to a card is kept (uuid, service, outcome, tier, the ids of the present predictors, the
  suggestions offered with the predictor each one orders, the knowledge base, the time): no patient identifier, no
  value.

**Faults** (``[database]`` settings, docs/deployment.md "Database faults"): the engine carries connect, statement and
pool timeouts; the database calls of requests (feedback, the JWT replay check, readiness) run in a few bounded
threads and are abandoned after :attr:`Store.deadline`, so a hung database holds no request thread. While the
database is unavailable (:class:`DatabaseHealth`) requests do not wait on it: feedback raises
:class:`DatabaseUnavailable` (503), the replay check answers from :class:`MemoryReplays`.

Nothing here logs request content: log lines carry counts, service ids and exception class names only.

Fork safety (gunicorn): a :class:`Store` forgets its pooled connections, threads and outage state in a forked child,
and a :class:`CardRecorder` starts its writer thread lazily, in the process that submits, with a fresh queue after a
fork.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid as uuid_module
import weakref
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from cds_service.contracts import EXTENSION_KEY
from cds_service.errors import Issue, ServiceUnavailable
from cds_service.protocol import FeedbackItem
from cds_service.settings import DatabaseSettings

logger = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
MIGRATION_BUSY_TIMEOUT_MS: Final = 60_000
"""SQLite: how long a migration waits for another instance's (a schema upgrade takes the write lock)."""
DEADLINE_MARGIN_S: Final = 0.5
"""A request gives up on the database this long after its statement timeout, even when the database never answers."""
REQUEST_DB_THREADS: Final = 4
"""Database calls of requests run in at most this many threads per process: while the database hangs, the stuck
calls hold these threads and no request thread."""
READINESS_LOG_INTERVAL_S: Final = 60.0
HEALTH_PROBE_INTERVAL_S: Final = 1.0
"""While the database is known to be unavailable, one background probe at most this often finds out it is back."""
_PG_MIGRATION_LOCK: Final = 0x6E78_7032_6D69_6772  # "nxp2migr": one key for every instance of the service
_IMMEDIATE: Final = "nxp2_cds_sqlite_immediate"
_HASH_VERSION: Final = 1
_OUTCOME_ORDER: Final = {"refractory": 0, "gi_perforation_death": 1}
_TIER_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}
TOP_REASONS: Final = 3
JTI_PURGE_INTERVAL: Final = timedelta(minutes=5)


class StoreError(ValueError):
    """The database URL is unusable (unparseable, unsupported dialect, missing driver). Never shows a password."""


class DatabaseUnavailable(ServiceUnavailable):
    """The database is down, hung or refusing writes (answered 503 with ``Retry-After``); nothing is known stored."""

    def __init__(self, retry_after: int, message: str = "The database is unavailable; try again later.") -> None:
        super().__init__(message, retry_after=retry_after, issues=[Issue(message, "transient")])


class DatabaseTimeout(Exception):
    """A database call did not finish in time (the database hangs); it was abandoned, not cancelled."""


AVAILABILITY_ERRORS: Final = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, DatabaseTimeout)
"""What a database that is down, hung, locked or overloaded raises (not a bad statement or bad data)."""
T = TypeVar("T")


# --- schema (must match the latest migration; tests/store/test_feedback_store.py checks it) --------------------------


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
    sa.Column("attempt", sa.String(32), nullable=True),
    sa.PrimaryKeyConstraint("key", name="pk_seen_jtis"),
    sa.Index("ix_seen_jtis_expires_at", "expires_at"),
)
"""JWT ids already accepted, shared by every worker and instance on this database: ``key`` is a SHA-256 of the
issuer and the ``jti`` (nothing else about the token is kept), ``expires_at`` when the token (plus leeway) expires,
``attempt`` the front door's id of the request that carried it (random, 32 hex digits; NULL without a front door)."""


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


def _sqlite_on_connect(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, begins transactions (see _sqlite_on_begin): DDL becomes transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            _sqlite_wal(cursor, busy_timeout_ms)
        finally:
            cursor.close()

    return on_connect


def _sqlite_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """Put the file in WAL mode (it stays so). Switching can fail at once with "database is locked" while another
    connection holds a lock, without waiting the busy timeout: retry within that time."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
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


def _make_engine(url: URL, settings: DatabaseSettings) -> Engine:
    """The engine with the settings' time bounds: PostgreSQL ``connect_timeout`` and ``statement_timeout`` (unless
    the URL sets them), a pool timeout, pre-ping; SQLite's busy timeout."""
    backend = url.get_backend_name()
    statement_ms = round(settings.statement_timeout_seconds * 1000)
    try:
        if backend == "sqlite":
            database = url.database or ""
            in_memory = not database or database == ":memory:" or "mode=memory" in database
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            options: dict[str, Any] = {} if in_memory else {"pool_timeout": settings.pool_timeout_seconds}
            engine = sa.create_engine(url, **options)
            sa.event.listen(engine, "connect", _sqlite_on_connect(statement_ms))
            sa.event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = settings.connect_timeout_seconds
        if "options" not in url.query:
            connect_args["options"] = f"-c statement_timeout={statement_ms}"
        return sa.create_engine(
            url, pool_pre_ping=True, pool_timeout=settings.pool_timeout_seconds, connect_args=connect_args
        )
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


# --- availability: bounded calls, the database's health, the in-memory replay store ------------------------------


class _Call:
    __slots__ = ("done", "error", "function", "result")

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class BoundedCalls:
    """Runs functions in at most ``threads`` daemon threads; a caller waits for its function at most a given time.

    A function that does not return in time is abandoned, not cancelled: its thread stays busy until it returns (a
    hung database answers at last, or its connection breaks). While every thread is busy a new call fails at once,
    so callers never queue behind a hung database. Fork-safe: a child starts with no threads."""

    def __init__(self, name: str, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be positive")
        self._name = name
        self._threads = threads
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._busy = 0
        self._started = 0

    def after_fork_in_child(self) -> None:
        self._reset()

    @property
    def busy(self) -> int:
        """Functions running now (finished or abandoned by their callers, or not)."""
        return self._busy

    def _submit(self, function: Callable[[], Any]) -> _Call | None:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            if self._busy >= self._threads:
                return None
            self._busy += 1
            start = self._started < self._busy  # no idle thread
            if start:
                self._started += 1
        call = _Call(function)
        if start:
            thread = threading.Thread(target=self._work, args=(self._tasks, self._lock), name=self._name, daemon=True)
            thread.start()
        self._tasks.put(call)
        return call

    def _work(self, tasks: queue.SimpleQueue[_Call], lock: threading.Lock) -> None:
        while True:
            call = tasks.get()
            try:
                call.result = call.function()
            except BaseException as exc:  # handed to the caller
                call.error = exc
            finally:
                with lock:
                    self._busy -= 1
                call.done.set()
                del call

    def call(self, function: Callable[[], T], timeout: float) -> T:
        """``function()``, or :class:`DatabaseTimeout` when it has not returned after ``timeout`` seconds (or every
        thread is still busy with earlier calls); its exception, if it raises one."""
        call = self._submit(function)
        if call is None:
            raise DatabaseTimeout(f"all {self._threads} {self._name} threads are still waiting")
        if not call.done.wait(timeout):
            raise DatabaseTimeout(f"no answer in {timeout:.1f} s")
        if call.error is not None:
            raise call.error
        result: T = call.result
        return result

    def start(self, function: Callable[[], object]) -> bool:
        """Run ``function()`` in the background (nobody waits for it); False when every thread is busy."""
        return self._submit(function) is not None


class DatabaseHealth:
    """Whether the database is usable, as this process's last database operations found (a circuit breaker).

    An availability error (down, hung, locked, pool exhausted) marks it unavailable; then requests do not wait on it
    (feedback is refused at once, replay checks use memory) and a background probe, at most once a second, finds out
    when it is back; so does any successful write. The first failure and the return are logged once per outage, with
    what was done meanwhile; nothing is logged per request."""

    def __init__(self, *, replay_fallback: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._replay_fallback = replay_fallback
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._fallbacks = 0
        self._refused = 0

    @property
    def available(self) -> bool:
        return self._down_since is None

    def failed(self, operation: str, error: BaseException) -> None:
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = self._clock()
                self._fallbacks = self._refused = 0
                self._next_probe = self._down_since + HEALTH_PROBE_INTERVAL_S
        _database_errors(operation, error)
        if first:
            replay = (
                "JWT replay checks use each worker's memory"
                if self._replay_fallback == "memory"
                else "authenticated calls are refused with 503"
            )
            logger.error(
                "DATABASE UNAVAILABLE (%s during %s): hook calls go on answering; %s; feedback is refused with 503; "
                "issued-card records wait in the spool",
                type(error).__name__,
                operation,
                replay,
            )

    def succeeded(self) -> None:
        with self._lock:
            down_since = self._down_since
            if down_since is None:
                return
            seconds = self._clock() - down_since
            self._down_since = None
            fallbacks, refused = self._fallbacks, self._refused
        logger.warning(
            "database available again after %.1f s: %d JWT replay checks were answered from memory, %d requests "
            "were refused with 503",
            seconds,
            fallbacks,
            refused,
        )

    def probe_due(self) -> bool:
        """True at most once a second while the database is unavailable: the caller starts a probe."""
        with self._lock:
            if self._down_since is None or self._clock() < self._next_probe:
                return False
            self._next_probe = self._clock() + HEALTH_PROBE_INTERVAL_S
            return True

    def count_fallback(self) -> None:
        with self._lock:
            self._fallbacks += 1

    def count_refused(self) -> None:
        with self._lock:
            self._refused += 1


class MemoryReplays:
    """JWT ids this process accepted (keys as in ``seen_jtis``), at most ``max_entries``, the oldest dropped first,
    each with the front door's id of the request that carried it (``attempt``, when there is a front door).

    Asked before the database (a replay this process saw needs no query), and alone while the database is
    unavailable; the ids accepted then are written to the database when it is back."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._expiry: OrderedDict[str, datetime] = OrderedDict()
        self._attempts: dict[str, str] = {}
        self._unsynced: OrderedDict[str, tuple[datetime, str | None]] = OrderedDict()
        self.evicted = 0
        """Unexpired ids dropped for room (their replays are caught by the database only)."""

    def __len__(self) -> int:
        return len(self._expiry)

    def replayed(self, key: str, now: datetime, attempt: str | None = None) -> bool:
        """``key`` is remembered, has not expired, and came with another request (a replay)."""
        with self._lock:
            expires = self._expiry.get(key)
            same = attempt is not None and self._attempts.get(key) == attempt
        return expires is not None and expires >= now and not same

    def add(
        self, key: str, expires: datetime, now: datetime, *, unsynced: bool = False, attempt: str | None = None
    ) -> bool:
        """Remember ``key``; False when it is already remembered, has not expired and came with another request
        (a replay)."""
        with self._lock:
            current = self._expiry.get(key)
            if current is not None and current >= now:
                return attempt is not None and self._attempts.get(key) == attempt
            self._expiry[key] = expires
            self._expiry.move_to_end(key)
            if attempt is None:
                self._attempts.pop(key, None)
            else:
                self._attempts[key] = attempt
            if unsynced:
                self._unsynced[key] = (expires, attempt)
                while len(self._unsynced) > self._max:
                    self._unsynced.popitem(last=False)
            self._trim(now)
            return True

    def _trim(self, now: datetime) -> None:
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires >= now and len(self._expiry) <= self._max:
                return
            del self._expiry[key]
            self._attempts.pop(key, None)
            if expires >= now:
                self.evicted += 1

    def unsynced(self, now: datetime) -> list[tuple[str, datetime, str | None]]:
        """Ids accepted while the database was unavailable and not yet written there (unexpired ones), with their
        attempts."""
        with self._lock:
            return [(k, e, a) for k, (e, a) in self._unsynced.items() if e >= now]

    def synced(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._unsynced.pop(key, None)


def _database_errors(operation: str, error: BaseException) -> None:
    from cds_service.telemetry import metrics  # not at import: the CLI loads this before the metrics folder is set

    reason = "timeout" if isinstance(error, DatabaseTimeout | sa.exc.TimeoutError) else type(error).__name__
    metrics.DATABASE_ERRORS.labels(operation, reason).inc()


@dataclass(frozen=True, slots=True)
class Readiness:
    """What :meth:`Store.readiness` found: the database answered (in time), its schema is the newest; ``error`` is
    why not (``timeout`` or an exception class name), ``seconds`` how long the check took."""

    database: bool
    schema: bool
    error: str | None
    seconds: float


@functools.cache
def _head_revision() -> str:
    return ",".join(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


class Store:
    """Feedback and issued cards in one database (a SQLAlchemy URL). Thread-safe; fork-safe."""

    def __init__(self, database_url: str, settings: DatabaseSettings | None = None) -> None:
        self.url = normalise_url(database_url)
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
        self.health = DatabaseHealth(replay_fallback=self.settings.replay_fallback)
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
                _database_errors("readiness", exc)
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
            from cds_service.telemetry import metrics

            self.health.count_fallback()
            metrics.REPLAY_FALLBACK.inc()
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
    def pending(self) -> int:
        """Cards waiting to be written (about)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer thread now (the first submit starts it anyway); safe to call often."""
        if self._pid != os.getpid():
            self._reset()
        thread = self._thread
        if not self._closed and (thread is None or not thread.is_alive()):
            self._start()

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
