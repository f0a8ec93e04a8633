"""The applications under test, built the way production builds them (auth off for benchmarking only)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from flask import Flask, Response, request

PARSE_ROUTE = "/bench/parse"
"""The baseline route of issue 16, added to the service's own app here (never in cds_service): it reads the request
body and parses it with ``json.loads``, nothing more, behind the same server, middleware and per-request hooks."""


def service_settings(**overrides: Any) -> Any:
    from cds_service.settings import load_settings

    folder = tempfile.mkdtemp(prefix="nxp2-bench-")
    overrides.setdefault("database_url", f"sqlite:///{folder}/bench.sqlite3")
    overrides.setdefault("auth", {"mode": "disabled"})
    return load_settings(**overrides)


def service_app(**overrides: Any) -> Flask:
    from cds_service.web.app import configure_process, create_app, freeze_startup_heap

    settings = service_settings(**overrides)
    configure_process(settings)  # as a production worker starts
    app = create_app(settings, migrate=True)
    freeze_startup_heap()
    return app


def add_parse_route(app: Flask) -> Flask:
    """Give ``app`` the read-and-parse route (:data:`PARSE_ROUTE`)."""

    def parse_only() -> Response:
        document = json.loads(request.get_data(cache=False))
        return Response(b'{"cards":[]}' if isinstance(document, dict) else b"{}", mimetype="application/json")

    app.add_url_rule(PARSE_ROUTE, "bench_parse_only", parse_only, methods=["POST"])
    return app


def gunicorn_app(kind: str = "hook") -> Any:
    """The WSGI application of the benchmark's gunicorn server, as production's gunicorn loads it (the service behind
    its RequestGuard), with the read-and-parse route beside the hook."""
    from cds_service.server.supervisor import RequestGuard
    from cds_service.web.app import configure_process, create_app, freeze_startup_heap
    from cds_service.web.runtime import runtime_of

    if kind != "hook":
        raise ValueError(f"unknown app {kind!r}")
    settings = service_settings(log_level=os.environ.get("BENCH_LOG_LEVEL", "INFO"))
    configure_process(settings)  # as a production worker starts
    app = add_parse_route(create_app(settings, migrate=True))
    freeze_startup_heap()
    return RequestGuard(
        app.wsgi_app,
        max_body_bytes=settings.max_body_bytes,
        budget_bytes=settings.server.max_inflight_body_bytes,
        retry_after_seconds=settings.server.retry_after_seconds,
        metrics=runtime_of(app).metrics,
    )
