"""The evidence page: public, no JavaScript, forest plots drawn on the server — checked in a real browser."""

from __future__ import annotations

import re
from html import escape

import pytest
from flask import Flask
from selenium.webdriver.common.by import By

from cds_service.core.engine import Engine
from cds_service.core.knowledge import KnowledgeBase
from tests.browser import ARTIFACTS, browser_or_skip, chromium, serve
from tests.http_support import AppFactory, Hook
from tests.synthetic_patients import edema_chart

GUARDED = {"mode": "required", "issuers": [{"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/j"}]}


@pytest.fixture
def guarded(make_app: AppFactory) -> Flask:
    """The service with authentication required (the page must still be public)."""
    return make_app(auth=GUARDED)


def test_page_is_public_even_when_authentication_is_required(guarded: Flask) -> None:
    """GET /evidence needs no token; the hook endpoint still does."""
    client = guarded.test_client()
    assert (client.get("/evidence").status_code, client.get("/cds-services").status_code) == (200, 401)


def test_page_forbids_scripts(guarded: Flask) -> None:
    """The page carries a Content-Security-Policy without script sources, and no <script> tag."""
    response = guarded.test_client().get("/evidence")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "<script" not in response.get_data(as_text=True)


def test_page_shows_counts_caveat_method_and_defects(guarded: Flask, knowledge: KnowledgeBase) -> None:
    """Every row's 2x2 counts, the caveat, the method and every known defect are on the page."""
    html = guarded.test_client().get("/evidence").get_data(as_text=True)
    assert "8/8 (100%) edema" in html
    assert "0/17 (0%) no edema" in html
    assert "reproduced 115/115" in html
    assert knowledge.source.caveat in html
    assert knowledge.source.method.split(":")[0] in html
    assert all(escape(defect.title, quote=False) in html for defect in knowledge.defects.values())


def test_plots_have_one_mark_per_row(guarded: Flask, knowledge: KnowledgeBase) -> None:
    """Each outcome's SVG forest plot has exactly one odds-ratio mark per row of its table."""
    html = guarded.test_client().get("/evidence").get_data(as_text=True)
    for outcome_id, outcome in knowledge.outcomes.items():
        svg = re.search(rf'<svg[^>]*data-outcome="{outcome_id}".*?</svg>', html, re.S)
        assert svg is not None
        assert svg.group(0).count('class="or-mark') == len(outcome.rows)


def test_cards_link_to_the_page_with_the_public_url(make_app: AppFactory) -> None:
    """Every card links (type absolute) to the evidence page under the configured public base URL."""
    app = make_app(public_base_url="https://cds.example.org/nxp2")
    links = [link for card in Hook(app).cards(*edema_chart()) for link in card["links"]]
    assert [(link["url"], link["type"]) for link in links] == [
        ("https://cds.example.org/nxp2/evidence#refractory", "absolute"),
        ("https://cds.example.org/nxp2/evidence#gi_perforation_death", "absolute"),
    ]


@pytest.mark.parametrize("language", ["en", "zh-CN"])
def test_page_in_a_real_browser(guarded: Flask, knowledge: KnowledgeBase, engine: Engine, language: str) -> None:
    """In headless chromium the page renders in English and in Chinese, each plot has one mark per row, and the
    console has no errors; a screenshot is kept in test-artifacts/evidence-<language>.png."""
    browser_or_skip()
    with serve(guarded) as base, chromium() as browser:
        browser.get(f"{base}/evidence?lang={language}")
        assert browser.title == engine.knowledge_for(language).wording.evidence_page.title
        for outcome_id, outcome in knowledge.outcomes.items():
            marks = browser.find_elements(By.CSS_SELECTOR, f'svg.forest[data-outcome="{outcome_id}"] .or-mark')
            assert len(marks) == len(outcome.rows)
            assert all(mark.is_displayed() and mark.size["width"] > 0 for mark in marks)
        log: list[dict[str, str]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
        errors = [entry for entry in log if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / f"evidence-{language}.png"))
