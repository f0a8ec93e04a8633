"""The application factory (cds_service/web/app.py) changes nothing process-wide: two apps in one process do not
interfere (each has its own FHIR pool and metrics, closed or counted apart), and what belongs to the process
(logging, the garbage collector) is set by whoever serves."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from cds_service.contracts import EXTENSION_KEY
from cds_service.settings import load_settings
from cds_service.store.recorder import CardRecorder
from cds_service.store.schema import issued_cards
from cds_service.store.store import Store
from cds_service.telemetry.metrics import MULTIPROC_ENV
from cds_service.web.app import close_app, create_app
from cds_service.web.runtime import runtime_of
from tests.builders import AT, condition, hook_request, patient, searchset
from tests.http_support import SERVICE_URL
from tests.synthetic_patients import CASES, nxp2_positive


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
