"""The operations endpoints, without authentication: liveness (``/healthz``), readiness (``/readyz``), the
Prometheus metrics of the application (``/metrics``) and the OpenAPI document (``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from cds_service.web.api import json_response
from cds_service.web.runtime import Runtime, runtime

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return Response(runtime().openapi, mimetype="application/json")


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Never touches the database (an outage must not get workers restarted)."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the database answers with the current schema; the knowledge base and value sets are loaded.

    Answers within ``[database] readiness_timeout_seconds`` whatever the database does. An unreachable database is
    reported but does not make the replica not ready (it still answers hook calls), unless
    ``readiness_requires_database = true``, or replay checks are refused during an outage (``replay_fallback =
    "refuse"`` with authentication on: no hook call could be answered)."""
    rt = runtime()
    rt.recorder.start()  # a new worker's writer adopts the spool files of dead ones, traffic or not
    database = rt.store.readiness()
    checks = {
        "database": database.database,
        "schema": database.schema,
        "knowledge_base": bool(rt.engine.knowledge.outcomes),
        "value_sets": bool(rt.engine.terminology.concepts),
    }
    required = dict(checks)
    if not database.database and not database_required_for_readiness(rt):
        del required["database"], required["schema"]
    ready = all(required.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if not database.database:
        body["database"] = {"error": database.error, "seconds": round(database.seconds, 3)}
    body["spool"] = {"pending_records": rt.recorder.pending}
    unmapped = rt.engine.unmapped_by_code()
    if unmapped:
        # A warning, not a failure: anti-NXP2 is still recognised by name (the "laboratory" prefetch template).
        body["warnings"] = {
            "mappings": {
                "recognised_by_name_only": sorted(p for p, how in unmapped.items() if how == "by-name"),
                "not_recognised": sorted(p for p, how in unmapped.items() if how == "not-recognised"),
                "fix": "run `nxp2-cds mappings survey --fhir-server URL` and add the site's codes to "
                "[mappings.local_codes]",
            }
        }
    return json_response(body, 200 if ready else 503)


def database_required_for_readiness(rt: Runtime) -> bool:
    """Whether an unavailable database makes this replica not ready."""
    db = rt.settings.database
    refuses_hooks = db.replay_fallback == "refuse" and rt.auth is not None and rt.auth.required
    return db.readiness_requires_database or refuses_hooks


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = runtime().metrics.render()
    return Response(body, content_type=content_type)
