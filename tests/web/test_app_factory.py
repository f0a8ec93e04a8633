"""The application factory (cds_service/web/app.py) changes nothing process-wide: two apps in one process do not
interfere (each has its own FHIR pool and metrics, closed or counted apart; the store and recorder it makes count
into its metrics and are closed with it), and what belongs to the process (logging, the garbage collector, exit
hooks) is set by whoever serves."""

from __future__ import annotations

import atexit
import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from cds_service.contracts import EXTENSION_KEY
from cds_service.fhir.client import new_session
from cds_service.settings import load_settings
from cds_service.store.recorder import CardRecorder
from cds_service.store.records import IssuedCard
from cds_service.store.schema import issued_cards
from cds_service.store.spool import SpoolingCardRecorder
from cds_service.store.store import Store
from cds_service.telemetry.metrics import MULTIPROC_ENV
from cds_service.web.app import close_app, create_app
from cds_service.web.runtime import Runtime, runtime_of
from tests.builders import AT, condition, hook_request, patient, searchset
from tests.http_support import SERVICE_URL, Feedback, Hook
from tests.synthetic_patients import CASES, edema_chart, nxp2_positive


def build(tmp_path: Path, name: str, **overrides: object) -> tuple[Flask, Store, CardRecorder]:
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path}/{name}.sqlite3", auth={"mode": "disabled"}, **overrides
    )
    store = Store(settings.database_url)
    recorder = CardRecorder(store)
    return create_app(settings, store=store, recorder=recorder, clock=lambda: AT, migrate=True), store, recorder


def test_building_an_app_leaves_the_root_logger_and_the_garbage_collector_alone(tmp_path: Path) -> None:
    """create_app adds no handler to the root logger, changes no level, and freezes nothing in the collector."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level, gc.get_freeze_count())
    _, store, recorder = build(tmp_path, "one", log_level="DEBUG")
    try:
        assert (list(root.handlers), root.level, gc.get_freeze_count()) == before
    finally:
        recorder.close()
        store.dispose()


def test_two_apps_in_one_process_answer_each_by_its_own_settings(tmp_path: Path) -> None:
    """An app whose cards are in English and one whose cards are in Chinese, built in one process, each answer in
    their own language and record their cards in their own database; closing one leaves the other serving."""
    case = next(c for c in CASES if c.refractory or c.gi)
    english, english_store, english_recorder = build(tmp_path, "en", cards={"language": "en"})
    chinese, chinese_store, chinese_recorder = build(tmp_path, "zh", cards={"language": "zh-CN"})
    try:
        body = hook_request(case.chart, pid=case.patient_id)
        first = english.test_client().post(SERVICE_URL, json=body).get_json()["cards"]
        second = chinese.test_client().post(SERVICE_URL, json=body).get_json()["cards"]
        languages = [c["extension"][EXTENSION_KEY]["knowledgeBase"]["language"] for c in first + second]
        assert (set(languages[: len(first)]), set(languages[len(first) :])) == ({"en"}, {"zh-CN"})
        assert english_recorder.flush()
        with english_store.engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).select_from(issued_cards)).scalar() == len(first)
        english_recorder.close()
        english_store.dispose()
        other = hook_request(case.chart, pid=case.patient_id, hook_instance="0b6c1c9e-2f4a-4d7e-9a1b-3c5d7e9f1a2b")
        again = chinese.test_client().post(SERVICE_URL, json=other)
        assert again.status_code == 200
        assert chinese_recorder.flush()
        with chinese_store.engine.connect() as connection:
            recorded = connection.execute(sa.select(sa.func.count()).select_from(issued_cards)).scalar()
        assert recorded == 2 * len(second)  # its own two answers (two hook instances), none of the other app's
    finally:
        english_recorder.close()
        chinese_recorder.close()
        english_store.dispose()
        chinese_store.dispose()


# -- what each application owns: its FHIR pool and its metrics --------------------------------------------------------

FHIR_PATH = "/fhir"
HOOK_ROUTE = "/cds-services/<service_id>"


@pytest.fixture
def two_apps(tmp_path: Path, httpserver: HTTPServer) -> Iterator[tuple[Flask, Flask]]:
    """Two apps in this process, both allowed to fetch from the test FHIR server; closed and disposed afterwards."""
    fhir = {"allowed_servers": [httpserver.url_for(FHIR_PATH)], "allow_http": True}
    first, first_store, first_recorder = build(tmp_path, "first", fhir=fhir)
    second, second_store, second_recorder = build(tmp_path, "second", fhir=fhir)
    yield first, second
    for app, store, recorder in ((first, first_store, first_recorder), (second, second_store, second_recorder)):
        close_app(app)
        recorder.close()
        store.dispose()


def fallback_request(httpserver: HTTPServer) -> dict[str, object]:
    """A hook call whose prefetch lacks the observations and the conditions, from a FHIR server that refuses batch:
    the two searches are sent as parallel GETs, on the app's FHIR pool."""
    refused = {"resourceType": "OperationOutcome"}
    httpserver.expect_request(FHIR_PATH, method="POST").respond_with_json(refused, status=405)
    httpserver.expect_request(f"{FHIR_PATH}/Observation").respond_with_json(searchset(nxp2_positive()))
    httpserver.expect_request(f"{FHIR_PATH}/Condition").respond_with_json(searchset(condition("M33.00")))
    document = hook_request([patient()]) | {"fhirServer": httpserver.url_for(FHIR_PATH)}
    del document["prefetch"]["observations"], document["prefetch"]["conditions"]
    return document


def hook_calls_counted(app: Flask) -> float:
    """The app's /metrics count of hook calls answered 200 (0 when absent)."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "nxp2_cds_http_requests_total"
        and sample.labels == {"route": HOOK_ROUTE, "method": "POST", "status": "200"}
    )


def test_two_apps_have_separate_fhir_pools(two_apps: tuple[Flask, Flask]) -> None:
    """Each app's runtime owns a FHIR pool of its own, made with it and open."""
    first, second = (runtime_of(app).fetch_pool for app in two_apps)
    assert first is not second
    assert (first.is_shut_down, second.is_shut_down) == (False, False)


def test_closing_an_app_shuts_its_fhir_pool(two_apps: tuple[Flask, Flask]) -> None:
    """close_app shuts the app's FHIR pool: it takes no more work."""
    app, _ = two_apps
    close_app(app)
    pool = runtime_of(app).fetch_pool
    assert pool.is_shut_down
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(int)


def test_closing_one_app_leaves_the_others_fhir_fetches_working(
    two_apps: tuple[Flask, Flask], httpserver: HTTPServer
) -> None:
    """After one app is closed, the other still fetches missing prefetch with parallel GETs on its own pool."""
    closed, serving = two_apps
    close_app(closed)
    response = serving.test_client().post(SERVICE_URL, json=fallback_request(httpserver))
    assert response.status_code == 200
    gets = sorted(request.path for request, _ in httpserver.log if request.method == "GET")
    assert gets == [f"{FHIR_PATH}/Condition", f"{FHIR_PATH}/Observation"]


def test_two_apps_have_separate_metrics_registries(two_apps: tuple[Flask, Flask]) -> None:
    """Each app's runtime holds metrics with a registry of its own."""
    first, second = (runtime_of(app).metrics for app in two_apps)
    assert first is not second
    assert first.registry is not second.registry


def test_one_apps_hook_calls_are_not_in_the_others_metrics(
    two_apps: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside multiprocess mode, a hook call answered by one app is counted in that app's /metrics only."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    counting, other = two_apps
    case = next(c for c in CASES if c.refractory or c.gi)
    answer = counting.test_client().post(SERVICE_URL, json=hook_request(case.chart, pid=case.patient_id))
    assert answer.status_code == 200
    assert (hook_calls_counted(counting), hook_calls_counted(other)) == (1, 0)


# -- what an application makes for itself: its store and its spooling recorder, counted in its metrics, closed with it

FAST = {"statement_timeout_seconds": 0.2, "readiness_timeout_seconds": 0.5}
"""Small database time bounds: a locked SQLite file fails a write in 0.2 s."""


def build_own(tmp_path: Path, name: str) -> Flask:
    """An app that makes its own store and spooling recorder (none handed in), as ``nxp2-cds serve``'s workers do;
    its SQLite file and its spool folder are its own."""
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path}/{name}.sqlite3",
        auth={"mode": "disabled"},
        database={"spool_dir": str(tmp_path / f"{name}-spool"), **FAST},
    )
    return create_app(settings, clock=lambda: AT, migrate=True)


@pytest.fixture
def own_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Flask, Flask]]:
    """Two such apps in this process (outside multiprocess mode, so /metrics is each app's registry); closed after."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    first, second = build_own(tmp_path, "first"), build_own(tmp_path, "second")
    yield first, second
    close_app(first)
    close_app(second)


def counted(app: Flask, name: str, **labels: str) -> float:
    """The sum of the app's /metrics samples ``name`` whose labels include ``labels`` (0 when absent)."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def issued_cards_in(app: Flask) -> int:
    with runtime_of(app).store.engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(issued_cards)).scalar_one())


def test_two_apps_count_their_database_errors_in_their_own_metrics(own_apps: tuple[Flask, Flask]) -> None:
    """Feedback refused (503) because one app's SQLite file is locked is counted in that app's
    nxp2_cds_database_errors_total only: the store the factory made counts into the app's metrics."""
    failing, other = own_apps
    lock = sqlite3.connect(runtime_of(failing).store.url.database or "", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        assert Feedback(failing).post().status_code == 503
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    errors = "nxp2_cds_database_errors_total"
    assert (counted(failing, errors, operation="feedback"), counted(other, errors)) == (1, 0)


def test_two_apps_count_their_spool_records_in_their_own_metrics(own_apps: tuple[Flask, Flask]) -> None:
    """The cards one app issues are counted as spooled, then written, in that app's nxp2_cds_spool_records_total
    only: the recorder the factory made counts into the app's metrics."""
    issuing, other = own_apps
    cards = Hook(issuing).cards(*edema_chart())
    assert cards
    assert runtime_of(issuing).recorder.flush(10)
    records = "nxp2_cds_spool_records_total"
    assert (counted(issuing, records, event="spooled"), counted(issuing, records, event="written")) == (
        len(cards),
        len(cards),
    )
    assert counted(other, records) == 0


def test_closing_an_app_twice_is_harmless(own_apps: tuple[Flask, Flask]) -> None:
    """A second close_app of the same app raises nothing and leaves it closed (its FHIR pool shut)."""
    app, _ = own_apps
    close_app(app)
    close_app(app)
    runtime = runtime_of(app)
    assert (runtime.closed, runtime.fetch_pool.is_shut_down) == (True, True)


def test_a_record_submitted_after_close_stays_in_the_spool(own_apps: tuple[Flask, Flask]) -> None:
    """A request that outlives close_app still gets its cards recorded: the record is appended to the spool (for the
    next process to write), not dropped."""
    app, _ = own_apps
    close_app(app)
    recorder = runtime_of(app).recorder
    assert isinstance(recorder, SpoolingCardRecorder)
    recorder.submit([IssuedCard("late", "nxp2-jdm-risk", "refractory", "warning", (), "kb@1", AT)])
    spooled = b"".join(path.read_bytes() for path in recorder.spool.directory.glob("cards-*.spool"))
    assert (recorder.dropped, spooled.count(b'"late"')) == (0, 1)


def test_close_waits_for_a_request_in_flight(own_apps: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    """close_app called while a hook call is being answered waits for it: the call gets its cards and they are in
    the database when close_app returns (gunicorn's quick stop closes the app while its threads still answer)."""
    app, _ = own_apps
    runtime = runtime_of(app)
    release = threading.Event()
    real_cards = runtime.engine.cards

    def held_cards(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return real_cards(*args, **kwargs)

    monkeypatch.setattr(runtime.engine, "cards", held_cards)
    answered: list[int] = []
    caller = threading.Thread(target=lambda: answered.append(Hook(app).call(*edema_chart()).status_code))
    caller.start()
    deadline = time.monotonic() + 10
    while runtime.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    closer = threading.Thread(target=close_app, args=(app,))
    closer.start()
    closer.join(0.3)
    waited = closer.is_alive()
    release.set()
    caller.join(10)
    closer.join(10)
    assert (waited, answered, closer.is_alive(), issued_cards_in(app)) == (True, [200], False, 2)


def test_a_release_that_fails_does_not_keep_the_others_open(
    own_apps: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When releasing one thing fails during close_app (a spool file that cannot be synced), the rest is still
    released (the store disposed, the session closed) and the failure is raised."""
    app, _ = own_apps
    runtime = runtime_of(app)
    released: list[str] = []

    def failing() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(
        runtime, "owned", (failing, lambda: released.append("store"), lambda: released.append("session"))
    )
    with pytest.raises(OSError, match="Input/output"):
        close_app(app)
    assert (released, runtime.fetch_pool.is_shut_down) == (["store", "session"], True)


def test_a_factory_that_fails_late_releases_what_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app failing after it made its session, store and recorder (here: building the runtime) releases all
    three before the error reaches the caller."""
    closed: list[str] = []

    def tracked_session() -> requests.Session:
        session = new_session()
        monkeypatch.setattr(session, "close", lambda: closed.append("session"))
        return session

    def broken_build(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("late failure")

    monkeypatch.setattr("cds_service.web.app.new_session", tracked_session)
    monkeypatch.setattr(Runtime, "build", broken_build)
    with pytest.raises(RuntimeError, match="late failure"):
        build_own(tmp_path, "late")
    assert closed == ["session"]


def test_a_closed_apps_recorder_has_written_its_records(own_apps: tuple[Flask, Flask]) -> None:
    """close_app, with no flush before it, writes the cards the app issued to its database: none is lost, none is
    left in its spool folder."""
    app, _ = own_apps
    cards = Hook(app).cards(*edema_chart())
    recorder = runtime_of(app).recorder
    assert isinstance(recorder, SpoolingCardRecorder)
    spool = recorder.spool.directory
    close_app(app)
    assert (issued_cards_in(app), sorted(spool.glob("cards-*.spool"))) == (len(cards), [])


def test_building_and_closing_an_app_registers_no_exit_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No atexit hook is registered by building an app, issuing cards through its recorder and closing it: what must
    be written at the end is written by close_app."""
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", lambda function, *args, **kwargs: registered.append(function))
    app = build_own(tmp_path, "one")
    Hook(app).cards(*edema_chart())
    close_app(app)
    assert registered == []
