"""Database faults in one process (issue 13.2 and 13.3): time bounds on the engine, the replay check's fallback to
memory, feedback's 503, readiness that answers while the database hangs, liveness that never asks it, and the spool
that keeps every issued-card record through an outage and the death of its writer.

The faults are real but local: SQLite under another connection's write lock, a PostgreSQL URL on a port nobody
listens on (refused), a loopback listener that never answers (hung), processes killed with SIGKILL. The faults of a
real PostgreSQL server under load (stopped, paused, a worker killed) are in ``tests/faults``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_service.core.engine import Engine
from cds_service.kit.client_tokens import ClientKey
from cds_service.settings import DatabaseSettings, load_settings
from cds_service.store.database import BoundedCalls, DatabaseTimeout, DatabaseUnavailable
from cds_service.store.records import IssuedCard
from cds_service.store.replays import MemoryReplays
from cds_service.store.spool import CardSpool, SpoolingCardRecorder, spool_directory, spooling_recorder
from cds_service.store.store import Store
from cds_service.telemetry.metrics import Metrics
from cds_service.web.app import StartupError, create_app
from tests.builders import AT
from tests.http_support import SERVICE_URL, Feedback, Hook, runtime_of
from tests.server_process import free_port
from tests.synthetic_patients import edema_chart

FAST = {"statement_timeout_seconds": 0.2, "readiness_timeout_seconds": 0.5}
"""Small time bounds, so that a locked SQLite file fails a write in 0.2 s."""
PUBLIC = "https://cds.example.org"
EHR = "https://ehr.example.org"
CHART = edema_chart()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def card(uuid: str) -> IssuedCard:
    return IssuedCard(uuid, "nxp2-jdm-risk", "refractory", "warning", ("anti_nxp2_positive",), "kb@1", AT)


def count(url: str, table: str = "issued_cards") -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample of the collectors a store or recorder was given (0 when absent)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def refused_url() -> str:
    """A PostgreSQL URL on a loopback port nobody listens on: every connection is refused at once."""
    return f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"


class WriteLock:
    """Another process's write lock on a SQLite file (``BEGIN IMMEDIATE`` held until released)."""

    def __init__(self, url: str) -> None:
        self._connection: sqlite3.Connection | None = sqlite3.connect(
            sa.make_url(url).database or "", isolation_level=None
        )
        self._connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        """Roll back and close (once; later calls do nothing)."""
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None


@pytest.fixture
def locked(sqlite_url: str) -> Iterator[tuple[str, WriteLock]]:
    """A migrated SQLite database whose write lock another connection holds (released at the end at the latest)."""
    Store(sqlite_url).migrate()
    lock = WriteLock(sqlite_url)
    try:
        yield sqlite_url, lock
    finally:
        lock.release()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that completes TCP handshakes and then never says a word (a hung database server)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


@pytest.fixture
def service(engine: Engine, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """The app as the service builds it (its own store with [database] settings, the spooling recorder)."""
    apps: list[Flask] = []

    def build(database_url: str, *, migrate: bool = True, **overrides: Any) -> Flask:
        overrides.setdefault("auth", {"mode": "disabled"})
        database = {"spool_dir": str(tmp_path / f"spool-{len(apps)}")} | FAST | overrides.pop("database", {})
        settings = load_settings(database_url=database_url, database=database, **overrides)
        app = create_app(settings, engine=engine, clock=lambda: AT, migrate=migrate)
        apps.append(app)
        return app

    yield build
    for app in apps:
        runtime_of(app).recorder.close()
        runtime_of(app).store.dispose()


# --- time bounds on the engine ----------------------------------------------------------------------------------


def test_postgresql_sessions_carry_the_statement_timeout(postgres_url: str) -> None:
    """Every PostgreSQL session starts with the configured statement_timeout; the pool waits pool_timeout."""
    store = Store(postgres_url, DatabaseSettings(statement_timeout_seconds=1.25, pool_timeout_seconds=0.75))
    try:
        with store.engine.connect() as connection:
            shown = connection.exec_driver_sql("SHOW statement_timeout").scalar()
        assert (shown, store.engine.pool.timeout()) == ("1250ms", 0.75)  # type: ignore[attr-defined]
    finally:
        store.dispose()


def test_sqlite_waits_for_a_lock_no_longer_than_the_statement_timeout(sqlite_url: str) -> None:
    """On SQLite the statement timeout is the busy timeout."""
    store = Store(sqlite_url, DatabaseSettings(statement_timeout_seconds=1.25))
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1250
    finally:
        store.dispose()


def test_a_slow_statement_is_cancelled_by_postgresql(postgres_url: str) -> None:
    """A statement running past statement_timeout is cancelled by the server (an OperationalError)."""
    store = Store(postgres_url, DatabaseSettings(statement_timeout_seconds=0.3))
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError), store.engine.connect() as connection:
            connection.exec_driver_sql("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3
    finally:
        store.dispose()


def test_a_call_that_hangs_is_abandoned_and_later_calls_fail_at_once() -> None:
    """BoundedCalls gives up on a call after its timeout; while its only thread is still stuck, the next call fails
    at once instead of queueing; once the stuck call returns, calls work again."""
    calls = BoundedCalls("test-db", 1)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(DatabaseTimeout):
        calls.call(lambda: release.wait(30), 0.2)
    abandoned = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(DatabaseTimeout):
        calls.call(lambda: 1, 5)
    refused = time.monotonic() - started
    release.set()
    assert wait_until(lambda: calls.busy == 0)
    assert (abandoned < 1.0, refused < 0.1, calls.call(lambda: 42, 5)) == (True, True, 42)


# --- the replay check -------------------------------------------------------------------------------------------


def test_replay_check_answers_from_memory_while_the_database_is_down() -> None:
    """With the database refusing connections, a new jti is accepted and its replay refused, from memory, and the
    fallback is counted."""
    metrics = Metrics()
    store = Store(refused_url(), metrics=metrics)
    try:
        first = store.remember_jti(EHR, "jti-1", LATER, NOW)
        again = store.remember_jti(EHR, "jti-1", LATER, NOW)
        assert (first, again, sample(metrics, "nxp2_cds_jwt_replay_fallback_total")) == (True, False, 1)
    finally:
        store.dispose()


def test_an_outage_is_logged_once_not_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """Twenty replay checks during one outage log one loud line, not twenty."""
    store = Store(refused_url())
    try:
        with caplog.at_level(logging.WARNING, logger="cds_service.store"):
            for n in range(20):
                store.remember_jti(EHR, f"jti-{n}", LATER, NOW)
        loud = [r for r in caplog.records if "DATABASE UNAVAILABLE" in r.getMessage()]
        assert len(loud) == 1
    finally:
        store.dispose()


def test_refuse_mode_answers_503_instead_of_using_memory() -> None:
    """With replay_fallback = "refuse", a replay check during an outage raises a 503 with Retry-After."""
    store = Store(refused_url(), DatabaseSettings(replay_fallback="refuse", retry_after_seconds=7))
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            store.remember_jti(EHR, "jti-1", LATER, NOW)
        assert (raised.value.status, raised.value.headers) == (503, {"Retry-After": "7"})
    finally:
        store.dispose()


def test_jtis_accepted_from_memory_reach_the_database_when_it_returns(locked: tuple[str, WriteLock]) -> None:
    """A jti accepted from memory while the database was locked is written there once it is back, so another worker
    (another store on the same database) then refuses its replay."""
    url, lock = locked
    worker = Store(url, DatabaseSettings(**FAST))
    other = Store(url, DatabaseSettings(**FAST))
    try:
        accepted = worker.remember_jti(EHR, "during-outage", LATER, NOW)
        lock.release()

        def back() -> bool:  # each check while marked unavailable starts a probe (at most once a second)
            worker.remember_jti(EHR, f"poll-{time.monotonic_ns()}", LATER, NOW)
            return worker.health.available

        assert wait_until(back, 5)
        worker.remember_jti(EHR, "after-recovery", LATER, NOW)  # carries the backlog to the database
        assert (accepted, other.remember_jti(EHR, "during-outage", LATER, NOW)) == (True, False)
    finally:
        worker.dispose()
        other.dispose()


def test_the_memory_replay_store_is_bounded() -> None:
    """MemoryReplays keeps at most its bound: the oldest ids go first (counted), expired ones go without counting."""
    replays = MemoryReplays(100)
    for n in range(10):
        replays.add(f"expired-{n}", NOW - timedelta(seconds=1), NOW - timedelta(minutes=1))
    for n in range(150):
        replays.add(f"key-{n}", LATER, NOW)
    assert (len(replays), replays.evicted) == (100, 50)
    assert (replays.replayed("key-0", NOW), replays.replayed("key-149", NOW)) == (False, True)


def test_the_memory_replay_store_takes_the_same_front_door_request_again() -> None:
    """A JWT id remembered with a front-door attempt is accepted again with that attempt (the request handed to
    another worker), and refused with another attempt or none (replays)."""
    replays = MemoryReplays(100)
    assert replays.add("key", LATER, NOW, attempt="a" * 32)
    assert (
        replays.add("key", LATER, NOW, attempt="a" * 32),
        replays.add("key", LATER, NOW, attempt="b" * 32),
        replays.add("key", LATER, NOW),
    ) == (True, False, False)


def test_a_jti_without_an_attempt_is_refused_even_with_one_later() -> None:
    """A JWT id first remembered without a front door is a replay under any attempt."""
    replays = MemoryReplays(100)
    replays.add("key", LATER, NOW)
    assert (replays.replayed("key", NOW, "a" * 32), replays.add("key", LATER, NOW, attempt="a" * 32)) == (True, False)


# --- feedback, hooks, readiness and liveness over HTTP ------------------------------------------------------------


def test_feedback_answers_503_with_retry_after_while_the_database_is_locked(
    locked: tuple[str, WriteLock], service: Callable[..., Flask]
) -> None:
    """Feedback that cannot be written gets 503, Retry-After and an OperationOutcome, quickly, and nothing is
    stored."""
    url, _ = locked
    app = service(url, migrate=False)
    started = time.monotonic()
    response = Feedback(app).post("card-1")
    elapsed = time.monotonic() - started
    outcome = response.get_json()
    assert (response.status_code, response.headers["Retry-After"], response.mimetype) == (
        503,
        "5",
        "application/fhir+json",
    )
    assert (outcome["resourceType"], outcome["issue"][0]["code"]) == ("OperationOutcome", "transient")
    assert elapsed < 2.0


def test_feedback_is_stored_again_once_the_database_returns(
    locked: tuple[str, WriteLock], service: Callable[..., Flask]
) -> None:
    """After the lock is released, feedback is answered 200 again within a few seconds, and it is in the database."""
    url, lock = locked
    feedback = Feedback(service(url, migrate=False))
    assert feedback.post("card-1").status_code == 503
    lock.release()
    assert wait_until(lambda: feedback.post("card-1").status_code == 200, 5)
    assert count(url, "feedback") == 1


def test_hook_calls_answer_with_cards_while_the_database_is_locked(
    locked: tuple[str, WriteLock], service: Callable[..., Flask], tmp_path: Path
) -> None:
    """With authentication on and the database locked, hook calls are answered 200 with their cards (the replay
    check from memory); their records are spooled and reach the database once it is back."""
    url, lock = locked
    key = ClientKey.generate("ES384", kid="ehr-1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(key.jwks()))
    app = service(
        url,
        migrate=False,
        public_base_url=PUBLIC,
        auth={"mode": "required", "issuers": [{"iss": EHR, "jwks_file": str(jwks)}]},
    )
    hook = Hook(app)
    uuids: list[str] = []
    for n in range(10):
        token = key.token(iss=EHR, aud=PUBLIC + SERVICE_URL)
        instance = f"00000000-0000-4000-8000-{n:012d}"
        response = hook.call(*CHART, hook_instance=instance, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        uuids += [c["uuid"] for c in response.get_json()["cards"]]
    lock.release()
    assert runtime_of(app).recorder.flush(10)
    assert (len(uuids), count(url)) == (20, 20)


def test_refuse_mode_answers_hook_calls_503_during_an_outage(service: Callable[..., Flask], tmp_path: Path) -> None:
    """With replay_fallback = "refuse" and the database down, an authenticated hook call gets 503 with Retry-After
    and an OperationOutcome (never a 500, never cards without the shared replay check)."""
    key = ClientKey.generate("ES384", kid="ehr-1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(key.jwks()))
    app = service(
        refused_url(),
        migrate=False,
        public_base_url=PUBLIC,
        auth={"mode": "required", "issuers": [{"iss": EHR, "jwks_file": str(jwks)}]},
        database={"replay_fallback": "refuse"},
    )
    token = key.token(iss=EHR, aud=PUBLIC + SERVICE_URL)
    response = Hook(app).call(*CHART, headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.headers.get("Retry-After"), response.get_json()["resourceType"]) == (
        503,
        "5",
        "OperationOutcome",
    )


def test_readyz_answers_within_its_bound_when_the_database_hangs(
    silent_server: int, service: Callable[..., Flask]
) -> None:
    """With readiness_requires_database = true, /readyz answers 503 within readiness_timeout_seconds when the
    database never answers, naming the timeout."""
    app = service(
        f"postgresql+psycopg://nobody@127.0.0.1:{silent_server}/nothing",
        migrate=False,
        database={"readiness_requires_database": True},
    )
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    elapsed = time.monotonic() - started
    body = response.get_json()
    assert (response.status_code, body["checks"]["database"], body["database"]["error"]) == (503, False, "timeout")
    assert elapsed < 1.0  # readiness_timeout_seconds = 0.5 here; 1.0 by default


def test_readyz_answers_at_once_while_an_earlier_check_still_waits(
    silent_server: int, service: Callable[..., Flask]
) -> None:
    """A second /readyz while the first one's check is still stuck answers at once (503), without a new wait."""
    client = service(
        f"postgresql+psycopg://nobody@127.0.0.1:{silent_server}/nothing",
        migrate=False,
        database={"readiness_requires_database": True},
    ).test_client()
    client.get("/readyz")
    started = time.monotonic()
    response = client.get("/readyz")
    assert (response.status_code, time.monotonic() - started < 0.2) == (503, True)


def test_healthz_never_touches_the_database(service: Callable[..., Flask], sqlite_url: str) -> None:
    """/healthz answers 200 even when any use of the database would raise."""
    app = service(sqlite_url)

    def broken(*_: Any, **__: Any) -> Any:
        raise AssertionError("healthz touched the database")

    runtime_of(app).store.engine.connect = broken
    response = app.test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_can_report_the_database_and_stay_ready(service: Callable[..., Flask]) -> None:
    """By default (readiness_requires_database = false) /readyz reports the unreachable database but answers 200:
    the replica stays in the Service and goes on answering hook calls."""
    app = service(refused_url(), migrate=False)
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.get_json()["checks"]["database"]) == (200, False)


def test_readyz_is_not_ready_when_replay_checks_are_refused_during_an_outage(
    service: Callable[..., Flask], tmp_path: Path
) -> None:
    """With authentication on and replay_fallback = "refuse", an unreachable database makes /readyz 503 even by
    default: such a replica could answer no hook call."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(ClientKey.generate("ES384", kid="ehr-1").jwks()))
    app = service(
        refused_url(),
        migrate=False,
        public_base_url=PUBLIC,
        auth={"mode": "required", "issuers": [{"iss": EHR, "jwks_file": str(jwks)}]},
        database={"replay_fallback": "refuse"},
    )
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.get_json()["checks"]["database"]) == (503, False)


def test_a_worker_starts_while_the_database_is_unreachable(service: Callable[..., Flask]) -> None:
    """A worker (re)started during an outage builds its app and serves hooks; /readyz reports the database."""
    client = service(refused_url(), migrate=False).test_client()
    hook = Hook(client).call(*CHART)
    ready = client.get("/readyz")
    assert (hook.status_code, len(hook.get_json()["cards"]), ready.get_json()["checks"]["database"]) == (200, 2, False)


def test_a_schema_that_is_not_current_still_stops_the_start(service: Callable[..., Flask], sqlite_url: str) -> None:
    """A reachable database whose schema is not the newest still refuses the start (only unreachable is let by)."""
    with pytest.raises(StartupError, match="schema is not current"):
        service(sqlite_url, migrate=False)


# --- the spool ----------------------------------------------------------------------------------------------------


@pytest.fixture
def spooled(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[Store, SpoolingCardRecorder]]:
    """A migrated SQLite store with small time bounds and a spooling recorder in tmp_path/spool."""
    store = Store(sqlite_url, DatabaseSettings(spool_dir=tmp_path / "spool", **FAST))
    store.migrate()
    recorder = spooling_recorder(store)
    try:
        yield store, recorder
    finally:
        recorder.close()
        store.dispose()


def spool_lines(directory: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in directory.glob("cards-*.spool"))


def test_spooled_records_reach_the_database(spooled: tuple[Store, SpoolingCardRecorder], sqlite_url: str) -> None:
    """Submitted records are in the database once flush() returns True, and no record is left in the spool."""
    _, recorder = spooled
    recorder.submit([card(f"c-{n}") for n in range(5)])
    assert recorder.flush(10)
    assert (count(sqlite_url), recorder.pending, spool_lines(recorder.spool.directory)) == (5, 0, 0)


def test_records_wait_in_the_spool_through_an_outage(
    spooled: tuple[Store, SpoolingCardRecorder], sqlite_url: str
) -> None:
    """While the database is locked the records wait on disk (flush() is False); once it is back they are written."""
    _, recorder = spooled
    lock = WriteLock(sqlite_url)
    try:
        recorder.submit([card(f"c-{n}") for n in range(10)])
        waiting = (recorder.flush(10), recorder.pending, spool_lines(recorder.spool.directory))
    finally:
        lock.release()
    assert waiting == (False, 10, 10)
    assert recorder.flush(10)
    assert (count(sqlite_url), recorder.pending) == (10, 0)


def test_submit_does_not_wait_for_the_database(spooled: tuple[Store, SpoolingCardRecorder], sqlite_url: str) -> None:
    """While the writer waits on a locked database, a hundred submits each return within milliseconds."""
    _, recorder = spooled
    lock = WriteLock(sqlite_url)
    slowest = 0.0
    try:
        for n in range(100):
            started = time.perf_counter()
            recorder.submit([card(f"c-{n}-a"), card(f"c-{n}-b")])
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.002)
    finally:
        lock.release()
    assert slowest < 0.05


WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    import orjson
    from cds_service.store.records import IssuedCard
    from cds_service.store.spool import CardSpool
    spool = CardSpool(Path(sys.argv[1]), max_bytes=10_000_000)
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    for n in range(int(sys.argv[2])):
        card = IssuedCard(f"{sys.argv[3]}-{n}", "nxp2-jdm-risk", None, "info", (), "kb@1", at)
        spool.append(orjson.dumps({"v": 1, **card.to_row()}) + b"\\n", 1)
    print("spooled", flush=True)
    if sys.argv[4] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    """
)


def spool_in_another_process(directory: Path, n: int, prefix: str, *, die: bool) -> subprocess.Popen[str]:
    """A process that spools ``n`` records into ``directory`` and then dies by SIGKILL (or lives on, holding them)."""
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(n), prefix, "die" if die else "live"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "spooled"
    if die:
        process.wait(30)
        process.stdout.close()
    return process


def test_a_killed_process_s_records_are_adopted_and_written(
    spooled: tuple[Store, SpoolingCardRecorder], sqlite_url: str
) -> None:
    """Records spooled by a process killed with SIGKILL are adopted by another process's writer and written; the
    file is then gone."""
    _, recorder = spooled
    dead = spool_in_another_process(recorder.spool.directory, 25, "dead", die=True)
    assert dead.returncode == -signal.SIGKILL
    recorder.start()
    assert recorder.flush(10)
    assert (count(sqlite_url), spool_lines(recorder.spool.directory)) == (25, 0)


def test_a_live_process_s_spool_is_left_alone(tmp_path: Path) -> None:
    """A spool file whose process is alive (it holds the lock) is not adopted; once that process is killed, it is."""
    directory = tmp_path / "spool"
    living = spool_in_another_process(directory, 7, "live", die=False)
    spool = CardSpool(directory, max_bytes=1_000_000)
    try:
        while_alive = spool.adopt_orphans()
        living.kill()
        living.wait(30)
        assert (while_alive, spool.adopt_orphans()) == (0, 7)
    finally:
        living.kill()
        living.wait(30)
        if living.stdout is not None:
            living.stdout.close()
        spool.close()


def test_two_writers_never_adopt_the_same_file(tmp_path: Path) -> None:
    """Two spools adopting the same orphans at once take each file exactly once (the lock decides)."""
    directory = tmp_path / "spool"
    for n in range(5):
        spool_in_another_process(directory, 3, f"orphan-{n}", die=True)
    spools = [CardSpool(directory, max_bytes=1_000_000) for _ in range(2)]
    barrier = threading.Barrier(2)
    taken: list[int] = [0, 0]

    def adopt(i: int) -> None:
        barrier.wait()
        taken[i] = spools[i].adopt_orphans()

    threads = [threading.Thread(target=adopt, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    names = [{s.path.name for s in spool.sealed()} for spool in spools]
    try:
        assert (sum(taken), len(names[0] | names[1]), names[0] & names[1]) == (15, 5, set())
    finally:
        for spool in spools:
            spool.close()


def test_writing_a_spool_file_twice_stores_it_once(
    spooled: tuple[Store, SpoolingCardRecorder], sqlite_url: str, tmp_path: Path
) -> None:
    """A spool file written to the database a second time (a copy, as after a crash between insert and delete)
    adds no row: card uuids are inserted ignoring conflicts."""
    _, recorder = spooled
    dead = spool_in_another_process(tmp_path / "elsewhere", 4, "twice", die=True)
    assert dead.returncode == -signal.SIGKILL
    [original] = list((tmp_path / "elsewhere").glob("cards-*.spool"))
    for copy in ("a", "b"):
        (recorder.spool.directory / f"cards-copy-{copy}.spool").write_bytes(original.read_bytes())
    recorder.start()
    assert recorder.flush(10)
    assert (count(sqlite_url), recorder.written) == (4, 8)


def test_records_beyond_the_bound_are_dropped_counted_and_logged(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database locked and a small spool bound, records past the bound are dropped, counted (recorder and
    metric) and logged once; the spool never holds more than its bound."""
    metrics = Metrics()
    settings = DatabaseSettings(spool_dir=tmp_path / "spool", spool_max_bytes=100_000, **FAST)
    store = Store(sqlite_url, settings, metrics=metrics)
    store.migrate()
    recorder = spooling_recorder(store)
    lock = WriteLock(sqlite_url)
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.store.spool"):
            for n in range(1000):
                recorder.submit([card(f"c-{n}")])
        dropped = recorder.dropped
        held = recorder.spool.pending_bytes
        logged = [r for r in caplog.records if "DROPPED" in r.getMessage()]
        assert dropped > 0
        assert (sample(metrics, "nxp2_cds_spool_records_total", event="dropped_full"), len(logged)) == (dropped, 1)
        assert (held <= 100_000, recorder.pending + dropped) == (True, 1000)
    finally:
        lock.release()
        recorder.close()
        store.dispose()


def test_a_torn_last_line_is_skipped_and_counted(spooled: tuple[Store, SpoolingCardRecorder], sqlite_url: str) -> None:
    """A spool file whose last line was torn (a crash mid-write) gives its whole lines; the torn one is counted."""
    _, recorder = spooled
    dead = spool_in_another_process(recorder.spool.directory, 3, "torn", die=True)
    assert dead.returncode == -signal.SIGKILL
    [path] = list(recorder.spool.directory.glob("cards-*.spool"))
    path.write_bytes(path.read_bytes() + b'{"v": 1, "uuid": "half')
    recorder.start()
    assert recorder.flush(10)
    assert (count(sqlite_url), recorder.rejected) == (3, 1)


def test_a_record_the_database_refuses_does_not_hold_back_the_others(postgres_url: str, tmp_path: Path) -> None:
    """A record PostgreSQL refuses (a uuid longer than the column) is left out and counted; the rest of its batch is
    written."""
    store = Store(postgres_url, DatabaseSettings(spool_dir=tmp_path / "spool"))
    store.migrate()
    recorder = spooling_recorder(store)
    try:
        recorder.submit([card("fine-1"), card("x" * 200), card("fine-2")])
        assert recorder.flush(10)
        assert (count(postgres_url), recorder.rejected) == (2, 1)
    finally:
        recorder.close()
        store.dispose()


def test_a_spool_directory_that_cannot_be_made_stops_the_start(
    service: Callable[..., Flask], sqlite_url: str, tmp_path: Path
) -> None:
    """A spool_dir that cannot be created (a file is in the way) stops the start with a message naming it."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StartupError, match="spool_dir"):
        service(sqlite_url, database={"spool_dir": str(tmp_path / "a-file" / "spool")})


def test_the_default_spool_directory_is_beside_the_sqlite_file(sqlite_url: str) -> None:
    """Without spool_dir, the spool is the folder nxp2-cds-spool beside the SQLite file."""
    store = Store(sqlite_url)
    try:
        expected = Path(sa.make_url(sqlite_url).database or "").parent / "nxp2-cds-spool"
        assert spool_directory(store) == expected
    finally:
        store.dispose()


class DownSink:
    """A card sink whose database is always down."""

    def record_cards(self, cards: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("down"))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_does_not_release_its_parent_s_spool(tmp_path: Path) -> None:
    """A child forked while the parent's recorder holds spooled records forgets them (closes its copy of the file,
    never unlocks it): the file stays the parent's, so no other process adopts it."""
    spool = CardSpool(tmp_path / "spool", max_bytes=1_000_000)
    spool.prepare()
    recorder = SpoolingCardRecorder(DownSink(), spool)
    recorder.submit([card("parent")])
    pid = os.fork()
    if pid == 0:  # the child
        os._exit(0 if recorder.pending == 0 else 3)
    _, status = os.waitpid(pid, 0)
    other = CardSpool(tmp_path / "spool", max_bytes=1_000_000)
    try:
        assert (os.waitstatus_to_exitcode(status), other.adopt_orphans(), recorder.pending) == (0, 0, 1)
    finally:
        recorder.close()
        other.close()
