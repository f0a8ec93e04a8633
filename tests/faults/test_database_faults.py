"""Database faults under load against a real PostgreSQL cluster that the tests start for themselves (issue 13.2, 13.3).

`nxp2-cds serve` (two workers, authentication on: every call's JWT goes through the replay check) runs against the
cluster while a few client threads make hook calls and send feedback. Three faults, one after the other, each run
once by a module fixture that records what the clients saw; the tests then check one thing each:

- **stopped**: the database is shut down (connections refused) and started again;
- **hung**: every PostgreSQL process is SIGSTOPped (the database hangs without a word) and SIGCONTed;
- **killed**: while the database is down and records wait in the spool, a gunicorn worker is killed with SIGKILL;
  the database comes back.

Afterwards every issued card must be in ``issued_cards`` (counted exactly: the uuids the clients received) and every
feedback answered 200 in ``feedback``. Loopback only; each fault lasts seconds; every process is stopped by its PID.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from cds_service.kit.client_tokens import ClientKey
from cds_service.store.store import Store
from tests.builders import condition, hook_request, patient
from tests.faults.front_door import require_nginx
from tests.faults.postgres_cluster import Cluster, own_cluster
from tests.server_process import Served, running
from tests.synthetic_patients import nxp2_positive

SERVICE_URL = "/cds-services/nxp2-jdm-risk"
FEEDBACK_URL = SERVICE_URL + "/feedback"
EHR = "https://ehr.example.org"
DATABASE = "nxp2_faults"
CHART = [patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")]
CARDS_PER_CALL = 2
CLIENTS = 3
READY_BOUND_S = 2.0
HOOK_BOUND_S = 5.0
"""The longest a hook call may take while the database hangs: the first replay check waits statement_timeout (3 s)
plus 0.5 s before it is abandoned; every later one answers from memory at once."""
SETTLE_S = 30.0
"""How long records may take to reach the database once it is back (the spool's backoff, the adoption scan)."""
MAX_CALLS = 1000
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@dataclass
class Answer:
    kind: str
    phase: str
    status: int
    seconds: float
    cards: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    """When it was sent (time.monotonic); set from ``seconds`` on construction."""
    retry_after: str | None = None
    resource_type: str | None = None
    card: str | None = None
    """Feedback: the card it names."""
    error: str | None = None
    """The client's exception when the connection broke (status 0)."""

    def __post_init__(self) -> None:
        self.started = time.monotonic() - self.seconds

    def near(self, moment: float, after: float) -> bool:
        """In flight at ``moment``, or sent less than ``after`` seconds later."""
        return self.started <= moment + after and self.started + self.seconds >= moment


@dataclass
class Deployment:
    served: Served
    cluster: Cluster
    key: ClientKey
    spool: Path

    def token(self, path: str) -> str:
        return self.key.token(iss=EHR, aud=self.served.url + path, lifetime_seconds=300)

    def hook(self, session: requests.Session, phase: str) -> Answer:
        body = hook_request(CHART, hook_instance=str(uuid.uuid4()))
        headers = {"Authorization": f"Bearer {self.token(SERVICE_URL)}"}
        started = time.monotonic()
        response = session.post(self.served.url + SERVICE_URL, json=body, headers=headers, timeout=30)
        seconds = time.monotonic() - started
        cards = [c["uuid"] for c in response.json().get("cards", [])] if response.status_code == 200 else []
        return Answer("hook", phase, response.status_code, seconds, cards)

    def feedback(self, session: requests.Session, card: str, phase: str) -> Answer:
        item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:05:00Z"}
        headers = {"Authorization": f"Bearer {self.token(FEEDBACK_URL)}"}
        started = time.monotonic()
        response = session.post(self.served.url + FEEDBACK_URL, json={"feedback": [item]}, headers=headers, timeout=30)
        seconds = time.monotonic() - started
        document: Any = response.json() if response.content else {}
        return Answer(
            "feedback",
            phase,
            response.status_code,
            seconds,
            retry_after=response.headers.get("Retry-After"),
            resource_type=document.get("resourceType") if isinstance(document, dict) else None,
            card=card,
        )

    def probe(self, path: str, phase: str) -> Answer:
        started = time.monotonic()
        response = requests.get(self.served.url + path, timeout=30)
        return Answer(path, phase, response.status_code, time.monotonic() - started)

    def health(self, phase: str) -> list[Answer]:
        """/readyz and /healthz, once each."""
        return [self.probe("/readyz", phase), self.probe("/healthz", phase)]

    def metric(self, name: str) -> float:
        """A sample of /metrics (all workers), 0 when absent."""
        text = requests.get(self.served.url + "/metrics", timeout=10).text
        found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def workers(self) -> list[int]:
        """The PIDs of the live gunicorn workers (from the log), oldest first."""
        pids = [int(m) for m in BOOTED.findall(self.served.log.read_text(errors="replace"))]
        return [pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]

    def stored(self, table: str, column: str, values: set[str]) -> set[str]:
        """Which of ``values`` are in ``table.column`` (read through a connection of the test's own)."""
        if not values:
            return set()
        with psycopg.connect(
            f"host=127.0.0.1 port={self.cluster.port} user=postgres dbname={DATABASE} connect_timeout=5"
        ) as connection:
            rows = connection.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", [list(values)])
            return {str(r[0]) for r in rows}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


class Load:
    """``CLIENTS`` threads making hook calls (each fifth followed by feedback on one of its cards) until stopped (or
    ``MAX_CALLS``); every answer is kept with the phase it started in."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.total = MAX_CALLS
        self.phase = "before"
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._made = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.total = 0  # stop early if the test failed
        for thread in self._threads:
            thread.join(120)

    def hooks(self, phase: str | None = None) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.kind == "hook" and (phase is None or a.phase == phase)]

    def wait(self, phase: str, hooks: int, seconds: float = 60.0) -> None:
        assert wait_until(lambda: len(self.hooks(phase)) >= hooks, seconds), f"{phase}: too few hook calls answered"

    def finish(self, phase: str, hooks: int) -> None:
        """Stop once ``hooks`` calls of ``phase`` are answered (the calls in flight are finished)."""
        self.wait(phase, hooks)
        self.total = 0
        for thread in self._threads:
            thread.join(120)

    def _run(self) -> None:
        with requests.Session() as session:
            while True:
                with self._lock:
                    if self._made >= self.total:
                        return
                    self._made += 1
                    n = self._made
                phase = self.phase
                answer = self._send("hook", phase, functools.partial(self.deployment.hook, session, phase))
                if n % 5 == 0 and answer.cards:
                    later = self.phase
                    send = functools.partial(self.deployment.feedback, session, answer.cards[0], later)
                    self._send("feedback", later, send)

    def _send(self, kind: str, phase: str, send: Callable[[], Answer]) -> Answer:
        """Send and keep the answer; a broken connection is kept as status 0 (the client got nothing)."""
        started = time.monotonic()
        try:
            answer = send()
        except requests.RequestException as exc:
            answer = Answer(kind, phase, 0, time.monotonic() - started, error=type(exc).__name__)
        with self._lock:
            self.answers.append(answer)
        return answer


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """`nxp2-cds serve` (nginx in front of 2 workers, authentication on) on the test's own PostgreSQL cluster."""
    require_nginx()
    root = tmp_path_factory.mktemp("database-faults")
    with own_cluster() as cluster:
        url = cluster.create_database(DATABASE)
        store = Store(url)
        store.migrate()
        store.dispose()
        key = ClientKey.generate("ES384", kid="ehr-1")
        (root / "jwks.json").write_text(json.dumps(key.jwks()))
        (root / "metrics").mkdir()
        settings = {
            "NXP2_CDS_DATABASE_URL": url,
            "NXP2_CDS_AUTH__ISSUERS": json.dumps([{"iss": EHR, "jwks_file": str(root / "jwks.json")}]),
            "NXP2_CDS_DATABASE__SPOOL_DIR": str(root / "spool"),
            "NXP2_CDS_SERVER__THREADS": "4",
            "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics"),  # as the container and the manifest set it
        }
        with running(root, "--no-migrate", workers=2, settings=settings) as served:
            yield Deployment(served, cluster, key, root / "spool")
            served.stop()


@dataclass
class Run:
    """What the clients saw during one fault, and what the database held afterwards."""

    load: Load
    probes: list[Answer]
    after: list[Answer] = field(default_factory=list)
    """Feedback sent once the database was back, until one was answered 200."""
    issued: set[str] = field(default_factory=set)
    stored_cards: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    stored_feedback: set[str] = field(default_factory=set)
    pending_during: float = 0.0
    """nxp2_cds_spool_pending_records during the outage."""
    pending_after: float = -1.0
    fallbacks: float = 0.0
    """nxp2_cds_jwt_replay_fallback_total after the fault."""
    killed: int | None = None
    killed_at: float = 0.0
    replaced: bool = False

    def settle(self, deployment: Deployment) -> None:
        """Wait (bounded) until every issued card is in the database, then read what is there."""
        self.issued = {u for a in self.load.hooks() for u in a.cards}
        self.acknowledged = {a.card for a in self.load.answers if a.kind == "feedback" and a.status == 200 and a.card}
        self.acknowledged |= {a.card for a in self.after if a.status == 200 and a.card}
        wait_until(lambda: deployment.stored("issued_cards", "uuid", self.issued) == self.issued, SETTLE_S)
        self.stored_cards = deployment.stored("issued_cards", "uuid", self.issued)
        self.stored_feedback = deployment.stored("feedback", "card_uuid", self.acknowledged)
        wait_until(lambda: deployment.metric("nxp2_cds_spool_pending_records") == 0, 5)  # published each 0.5 s
        self.pending_after = deployment.metric("nxp2_cds_spool_pending_records")
        self.fallbacks = deployment.metric("nxp2_cds_jwt_replay_fallback_total")


@contextmanager
def fault(deployment: Deployment, before: int, cause: Callable[[], None], phase: str) -> Iterator[Load]:
    """The load against a running database until ``before`` hook calls are answered; then ``cause`` (the fault), and
    the calls from then on count in ``phase``."""
    deployment.cluster.running()
    with Load(deployment) as load:
        load.wait("before", before)
        cause()
        load.phase = phase
        yield load


def feedback_until_stored(deployment: Deployment, run: Run) -> None:
    """Once the database is back, feedback is answered 200 again (within seconds)."""
    card = next(u for a in run.load.hooks() for u in a.cards)
    with requests.Session() as session:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            answer = deployment.feedback(session, card, "after")
            run.after.append(answer)
            if answer.status == 200:
                return
            time.sleep(0.3)


# --- the database stopped and started ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped(deployment: Deployment) -> Run:
    with fault(deployment, 40, deployment.cluster.stop, "outage") as load:
        time.sleep(0.5)
        probes = []
        with requests.Session() as session:
            for _ in range(3):
                probes += deployment.health("outage")
                card = next(u for a in load.hooks() for u in a.cards)
                probes.append(deployment.feedback(session, card, "outage"))
        load.wait("outage", 100)
        pending = deployment.metric("nxp2_cds_spool_pending_records")
        deployment.cluster.start()
        load.phase = "after"
        load.finish("after", 40)
    run = Run(load, probes, pending_during=pending)
    feedback_until_stored(deployment, run)
    run.settle(deployment)
    return run


def test_stopped_database_hook_calls_answer_with_cards(stopped: Run) -> None:
    """Every hook call, before, during and after the outage, is answered 200 with its cards (authentication on)."""
    hooks = stopped.load.hooks()
    assert len(stopped.load.hooks("outage")) >= 100
    assert [(a.status, len(a.cards)) for a in hooks if (a.status, len(a.cards)) != (200, CARDS_PER_CALL)] == []


def test_stopped_database_feedback_gets_503_with_retry_after_and_an_outcome(stopped: Run) -> None:
    """Feedback during the outage gets 503 with Retry-After and an OperationOutcome; no feedback ever gets another
    error."""
    during = [a for a in stopped.probes if a.kind == "feedback"]
    assert {(a.status, a.retry_after, a.resource_type) for a in during} == {(503, "5", "OperationOutcome")}
    assert {a.status for a in stopped.load.answers if a.kind == "feedback"} <= {200, 503}


def test_stopped_database_readyz_answers_within_2_s_and_stays_ready(stopped: Run) -> None:
    """/readyz answers within 2 s while the database is down, and (by default) 200: the replica goes on answering
    hook calls, so it stays in the Service."""
    ready = [(a.status, a.seconds < READY_BOUND_S) for a in stopped.probes if a.kind == "/readyz"]
    assert ready == [(200, True)] * 3


def test_stopped_database_healthz_answers_200(stopped: Run) -> None:
    """/healthz answers 200 while the database is down."""
    assert [a.status for a in stopped.probes if a.kind == "/healthz"] == [200] * 3


def test_stopped_database_loses_no_issued_card(stopped: Run) -> None:
    """Every card the clients received is in issued_cards once the database is back: N calls, N x 2 rows."""
    assert len(stopped.issued) == CARDS_PER_CALL * len(stopped.load.hooks())
    assert stopped.issued - stopped.stored_cards == set()


def test_stopped_database_loses_no_acknowledged_feedback(stopped: Run) -> None:
    """Every feedback answered 200 is in the database."""
    assert stopped.acknowledged - stopped.stored_feedback == set()


def test_feedback_is_stored_again_once_the_database_is_back(stopped: Run) -> None:
    """After the restart, feedback is answered 200 again within seconds."""
    assert stopped.after[-1].status == 200


def test_stopped_database_metrics_show_what_waits_and_the_fallback(stopped: Run) -> None:
    """During the outage nxp2_cds_spool_pending_records counts the records waiting, and afterwards 0; the replay
    checks answered from memory are counted."""
    assert (stopped.pending_during > 0, stopped.pending_after, stopped.fallbacks > 0) == (True, 0.0, True)


# --- the database hung (SIGSTOP) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hung(deployment: Deployment) -> Run:
    with fault(deployment, 30, deployment.cluster.pause, "hung") as load:
        probes = []
        try:
            for _ in range(3):
                probes += deployment.health("hung")
            load.wait("hung", 80, seconds=30)
        finally:
            deployment.cluster.resume()
        load.phase = "after"
        load.finish("after", 30)
    run = Run(load, probes)
    run.settle(deployment)
    return run


def test_hung_database_readyz_answers_within_2_s(hung: Run) -> None:
    """With every PostgreSQL process stopped (SIGSTOP), /readyz answers within 2 s, each time (200: by default an
    unavailable database is reported, not a reason to leave the Service)."""
    assert [(a.status, a.seconds < READY_BOUND_S) for a in hung.probes if a.kind == "/readyz"] == [(200, True)] * 3


def test_hung_database_healthz_answers_200(hung: Run) -> None:
    """/healthz answers 200 while the database hangs."""
    assert [a.status for a in hung.probes if a.kind == "/healthz"] == [200] * 3


def test_hung_database_hook_calls_answer_within_the_bound(hung: Run) -> None:
    """While the database hangs, hook calls are answered 200 with cards, none slower than the bound."""
    during = hung.load.hooks("hung")
    assert [(a.status, len(a.cards)) for a in during if (a.status, len(a.cards)) != (200, CARDS_PER_CALL)] == []
    assert max(a.seconds for a in during) < HOOK_BOUND_S


def test_hung_database_loses_no_issued_card(hung: Run) -> None:
    """After SIGCONT every card issued during the hang is in issued_cards."""
    assert len(hung.issued) == CARDS_PER_CALL * len(hung.load.hooks())
    assert hung.issued - hung.stored_cards == set()


# --- a worker killed with SIGKILL while records wait in the spool -----------------------------------------------


def spooled_by(deployment: Deployment, pid: int) -> int:
    return sum(p.stat().st_size for p in deployment.spool.glob(f"cards-{pid}-*.spool"))


@pytest.fixture(scope="module")
def killed(deployment: Deployment) -> Run:
    cluster = deployment.cluster
    with fault(deployment, 20, cluster.stop, "outage") as load:
        load.wait("outage", 60)
        workers = deployment.workers()
        victim = max(workers, key=lambda pid: spooled_by(deployment, pid))
        assert spooled_by(deployment, victim) > 0, "the worker to kill has nothing in the spool"
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(lambda: len(deployment.workers()) == 2 and victim not in deployment.workers(), 30)
        load.phase = "killed"
        load.wait("killed", 20)
        cluster.start()
        load.phase = "after"
        load.finish("after", 20)
    run = Run(load, [], killed=victim, killed_at=killed_at, replaced=replaced)
    run.settle(deployment)
    return run


def test_killed_worker_is_replaced_and_hooks_go_on(killed: Run) -> None:
    """gunicorn replaces the SIGKILLed worker (booted while the database is still down) and no hook call gets a 5xx:
    the calls the killed worker had in flight are handed by the front door to the other worker, whose replay check
    knows the same request (not a replay), and answered 200 with their cards. The one thing a kill can still cost is
    an answer the worker had begun to write (nginx has passed its headers on and cannot start again): at most one
    such broken connection, at the moment of the kill."""
    failed = [a for a in killed.load.hooks() if (a.status, len(a.cards)) != (200, CARDS_PER_CALL)]
    assert killed.replaced
    assert [(a.status, a.error) for a in failed if a.status != 0] == []  # no 5xx, no other status
    assert [a for a in failed if not a.near(killed.killed_at, after=0.2)] == []
    assert len(failed) <= 1


def test_killed_worker_loses_no_issued_card(killed: Run, deployment: Deployment) -> None:
    """The records the killed worker had spooled are adopted and written: every issued card is in issued_cards,
    and the killed worker's spool files are gone."""
    answered = [a for a in killed.load.hooks() if a.status == 200]
    assert len(killed.issued) == CARDS_PER_CALL * len(answered)
    assert killed.issued - killed.stored_cards == set()
    assert killed.killed is not None
    assert list(deployment.spool.glob(f"cards-{killed.killed}-*.spool")) == []


def test_killed_worker_loses_no_acknowledged_feedback(killed: Run) -> None:
    """Every feedback answered 200 (before the outage, and after it) is in the database."""
    assert killed.acknowledged
    assert killed.acknowledged - killed.stored_feedback == set()
