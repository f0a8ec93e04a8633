"""What a gunicorn worker does with the application it builds: its request guard counts refusals in that
application's metrics, and gunicorn's ``worker_exit`` hook closes it."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

from flask import Flask

from cds_service.server.supervisor import RequestGuard, _worker_exit, gunicorn_options
from cds_service.web.runtime import runtime_of
from tests.http_support import AppFactory

REFUSED = "nxp2_cds_requests_refused_total"


def post(guard: RequestGuard, length: int) -> str:
    """POST a body of ``length`` bytes through the guard; its status line."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/cds-services/nxp2-jdm-risk",
        "CONTENT_LENGTH": str(length),
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(b" " * length),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    answer: dict[str, str] = {}

    def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    b"".join(guard(environ, start_response))
    return answer["status"]


def refused(app: Flask, reason: str) -> float:
    return runtime_of(app).metrics.registry.get_sample_value(REFUSED, {"reason": reason}) or 0.0


def test_the_guard_counts_a_refusal_in_its_applications_metrics(make_app: AppFactory) -> None:
    """A body over the limit refused (413) by the guard in front of one app is counted in that app's
    nxp2_cds_requests_refused_total, not in another app's of the same process."""
    guarded, other = make_app(), make_app()
    metrics = runtime_of(guarded).metrics
    guard = RequestGuard(
        guarded.wsgi_app, max_body_bytes=100, budget_bytes=1000, retry_after_seconds=1, metrics=metrics
    )
    assert post(guard, 101).startswith("413")
    assert (refused(guarded, "too-large"), refused(other, "too-large")) == (1, 0)


def test_the_worker_exit_hook_closes_the_workers_application(make_app: AppFactory) -> None:
    """gunicorn's worker_exit hook (set in the server's gunicorn options) closes the app the worker built."""
    app = make_app()
    hook = gunicorn_options("127.0.0.1", 0)["worker_exit"]
    hook(None, SimpleNamespace(app=SimpleNamespace(served=app)))
    assert runtime_of(app).closed


def test_the_worker_exit_hook_does_nothing_for_a_worker_without_an_application() -> None:
    """A worker that never built an app (it failed to boot, or runs another gunicorn application) exits quietly."""
    _worker_exit(None, SimpleNamespace(app=SimpleNamespace()))
