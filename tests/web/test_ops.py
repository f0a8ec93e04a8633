"""Operations endpoints: liveness, readiness, and Prometheus metrics that move by the right amounts."""

from __future__ import annotations

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer

from cds_service.store.store import Store
from tests.builders import condition, hook_request, searchset
from tests.http_support import AppFactory, Feedback, Hook, runtime_of
from tests.synthetic_patients import edema_chart

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(app: Flask) -> Samples:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_liveness(make_app: AppFactory) -> None:
    """/healthz answers 200 without authentication."""
    app = make_app(auth={"mode": "required", "issuers": [{"iss": "x", "jwks_url": "https://x/j"}]})
    assert app.test_client().get("/healthz").get_json() == {"status": "ok"}


def test_readiness_when_everything_is_loaded(make_app: AppFactory) -> None:
    """/readyz answers 200 when the database answers with the current schema and the knowledge base is loaded."""
    body = make_app().test_client().get("/readyz").get_json()
    assert (body["status"], body["checks"]) == (
        "ready",
        {"database": True, "schema": True, "knowledge_base": True, "value_sets": True},
    )


def test_readiness_warns_while_anti_nxp2_has_no_site_code(make_app: AppFactory) -> None:
    """/readyz stays ready but names the predictors recognised by name only until the site maps its codes."""
    body = make_app().test_client().get("/readyz").get_json()
    assert (body["status"], body["warnings"]["mappings"]["recognised_by_name_only"]) == (
        "ready",
        ["anti_nxp2_positive"],
    )


def test_not_ready_when_the_database_is_down(make_app: AppFactory) -> None:
    """With readiness_requires_database = true, /readyz answers 503 naming the failed check when the database cannot
    be reached."""
    app = make_app(database={"readiness_requires_database": True})
    runtime_of(app).store = Store("postgresql+psycopg://nobody@127.0.0.1:9/nothing?connect_timeout=1")
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.get_json()["checks"]["database"]) == (503, False)


@pytest.fixture
def moved(make_app: AppFactory, httpserver: HTTPServer) -> tuple[Samples, Samples]:
    """Metrics before and after: 2 hook calls (2 cards each), 1 fallback fetch, 2 feedback entries (one repeated),
    1 refused token."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    guarded = make_app(auth={"mode": "required", "issuers": [{"iss": "x", "jwks_url": "https://x.example/j"}]})

    def both() -> Samples:
        """The app's samples, and the authentication failures counted by ``guarded`` (which refuses the token)."""
        refused = {key: value for key, value in scrape(guarded).items() if key[0] == "nxp2_cds_auth_failures_total"}
        return scrape(app) | refused

    before = both()
    client = app.test_client()
    hook, feedback = Hook(client), Feedback(client)
    cards = hook.cards(*edema_chart())
    httpserver.expect_request("/fhir/Condition").respond_with_json(searchset(condition("M33.00"), condition("R60.0")))
    fallback = hook_request(edema_chart()) | {"fhirServer": base}
    del fallback["prefetch"]["conditions"]
    assert hook.send(fallback).status_code == 200
    for _ in range(2):
        assert feedback.post(cards[0]["uuid"], outcomeTimestamp="2026-11-24T12:00:00Z").status_code == 200
    assert Hook(guarded).call(*edema_chart()).status_code == 401
    return before, both()


def test_request_counter_moves(moved: tuple[Samples, Samples]) -> None:
    """Two hook calls and two feedback posts are counted by route, method and status."""
    before, after = moved
    hook = {"route": "/cds-services/<service_id>", "method": "POST"}
    feedback = {"route": "/cds-services/<service_id>/feedback", "method": "POST", "status": "200"}
    assert delta(before, after, "nxp2_cds_http_requests_total", **hook, status="200") == 2
    assert delta(before, after, "nxp2_cds_http_requests_total", **feedback) == 2
    assert delta(before, after, "nxp2_cds_http_request_duration_seconds_count", route=hook["route"]) >= 2


def test_cards_are_counted_by_outcome_and_tier(moved: tuple[Samples, Samples]) -> None:
    """Each issued card is counted once under its outcome and tier."""
    before, after = moved
    assert delta(before, after, "nxp2_cds_cards_issued_total", outcome="refractory", tier="warning") == 2
    assert delta(before, after, "nxp2_cds_cards_issued_total", outcome="gi_perforation_death", tier="warning") == 2


def test_fhir_fallback_is_counted(moved: tuple[Samples, Samples]) -> None:
    """One fallback fetch: one successful call, one FHIR request, one timing."""
    before, after = moved
    assert delta(before, after, "nxp2_cds_fhir_fallback_calls_total", result="ok") == 1
    assert delta(before, after, "nxp2_cds_fhir_requests_total") == 1
    assert delta(before, after, "nxp2_cds_fhir_fallback_duration_seconds_count") == 1


def test_feedback_outcomes_and_repeats_are_counted(moved: tuple[Samples, Samples]) -> None:
    """Two overridden entries received, one of them a repeat."""
    before, after = moved
    assert delta(before, after, "nxp2_cds_feedback_total", outcome="overridden") == 2
    assert delta(before, after, "nxp2_cds_feedback_duplicates_total") == 1


def test_auth_failures_are_counted_by_reason(moved: tuple[Samples, Samples]) -> None:
    """A call without a token is counted as an authentication failure with its reason."""
    before, after = moved
    assert delta(before, after, "nxp2_cds_auth_failures_total", reason="missing-authorization") == 1


def test_metrics_carry_no_patient_data(moved: tuple[Samples, Samples]) -> None:
    """No label value names a patient."""
    _, after = moved
    assert not [key for key in after if "pat-1" in str(key)]


def test_importing_the_cli_does_not_load_the_metrics_registry() -> None:
    """`nxp2-cds serve` must choose the Prometheus multiprocess folder before prometheus_client is first imported
    (it decides multiprocess mode at import): importing the command line loads neither."""
    import subprocess
    import sys

    probe = (
        "import sys, cds_service.cli.main; "
        "print('prometheus_client' in sys.modules, 'cds_service.telemetry.metrics' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", "False"]
