"""The application factory (cds_service/web/app.py) changes nothing process-wide: two apps in one process do not
interfere, and what belongs to the process (logging, the garbage collector) is set by whoever serves."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from cds_service.contracts import EXTENSION_KEY
from cds_service.settings import load_settings
from cds_service.store.recorder import CardRecorder
from cds_service.store.schema import issued_cards
from cds_service.store.store import Store
from cds_service.web.app import create_app
from tests.builders import AT, hook_request
from tests.http_support import SERVICE_URL
from tests.synthetic_patients import CASES


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
