"""Per-request bookkeeping around every endpoint: the request id (``X-Request-ID``: the caller's when it is a safe
token, else a new one; echoed on the answer and bound to every log line), one structured log line per request, and
the request counters of the application's metrics (probes and scrapes not counted), and the count of requests in
flight that closing the application waits for."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from flask import Flask, Response, g, request

from cds_service.contracts import SERVICE_ID
from cds_service.web.runtime import runtime

log = structlog.get_logger("nxp2_cds.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_UNCOUNTED = frozenset({"/metrics", "/healthz", "/readyz"})
"""Probes and scrapes are not counted as traffic (they would drown it)."""


def init_app(app: Flask) -> None:
    app.before_request(_start_request)
    app.after_request(_log_request)
    app.teardown_request(_end_request)


def _start_request() -> None:
    runtime().enter()
    g.counted_in_flight = True  # so that teardown leaves only what was entered
    g.started = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    g.log_fields = {}
    structlog.contextvars.bind_contextvars(request_id=g.request_id)


def _log_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
    service_id = (request.view_args or {}).get("service_id")
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    if rule not in _UNCOUNTED:
        metrics = runtime().metrics
        metrics.requests.labels(rule, request.method, str(response.status_code)).inc()
        metrics.request_seconds.labels(rule).observe(seconds)
    log.info(
        "request",
        method=request.method,
        route=rule,
        service_id=service_id if service_id == SERVICE_ID else None,
        status=response.status_code,
        duration_ms=round(seconds * 1000, 2),
        **g.get("log_fields", {}),
    )
    return response


def _end_request(_: BaseException | None) -> None:
    structlog.contextvars.clear_contextvars()
    if g.pop("counted_in_flight", False):
        runtime().leave()
