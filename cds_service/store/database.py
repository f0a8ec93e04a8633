"""The database: its URL and engine (SQLite and PostgreSQL set-up, fork awareness), the migrations' configuration,
and its availability — calls bounded in time, the health that tells an outage, readiness."""

from __future__ import annotations

import functools
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from cds_service.errors import Issue, ServiceUnavailable
from cds_service.settings import DatabaseSettings
from cds_service.telemetry.sinks import NULL_METRICS, StoreMetrics

if TYPE_CHECKING:  # annotations only: both import this module
    from cds_service.store.recorder import CardRecorder
    from cds_service.store.store import Store

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
    what was done meanwhile; nothing is logged per request. Each failure is counted in ``metrics``
    (``nxp2_cds_database_errors_total``)."""

    def __init__(
        self,
        *,
        replay_fallback: str,
        metrics: StoreMetrics = NULL_METRICS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._replay_fallback = replay_fallback
        self._metrics = metrics
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
        count_database_error(self._metrics, operation, error)
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


def count_database_error(metrics: StoreMetrics, operation: str, error: BaseException) -> None:
    """``nxp2_cds_database_errors_total{operation, reason}``: the reason is ``timeout`` or the exception's class."""
    reason = "timeout" if isinstance(error, DatabaseTimeout | sa.exc.TimeoutError) else type(error).__name__
    metrics.count_database_error(operation, reason)


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
