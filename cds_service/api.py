"""The CDS Hooks endpoints: discovery, the patient-view service, feedback.

Parsing and validation happen here (request bodies → :mod:`protocol` models); the work is done by the pure
engine; I/O (the FHIR server, the database, the clock) stays in this module and :mod:`prefetch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import requests
from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, ValidationError

from .cards import CardContext
from .engine import Engine
from .errors import BadRequest, Issue, NotFound, UnsupportedMediaType
from .feedback import CardRecorder, IssuedCard, Store
from .fhir_client import Deadline, FhirClient, ServerPolicy
from .prefetch import Resolved, build_templates, resolve
from .protocol import FeedbackRequest, HookRequest, PatientViewContext
from .settings import Settings

SERVICE_ID = "nxp2-jdm-risk"
HOOK = "patient-view"
JSON_MIMETYPES = frozenset({"application/json", "application/fhir+json"})

bp = Blueprint("cds_hooks", __name__)
M = TypeVar("M", bound=BaseModel)


@dataclass
class Runtime:
    """Everything the endpoints need, built once per worker process by :func:`cds_service.create_app`."""

    settings: Settings
    engine: Engine
    store: Store
    recorder: CardRecorder
    session: requests.Session
    policy: ServerPolicy
    templates: dict[str, str]
    discovery: bytes
    clock: Callable[[], datetime]

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine,
        store: Store,
        recorder: CardRecorder,
        session: requests.Session,
        clock: Callable[[], datetime] | None = None,
    ) -> Runtime:
        templates = build_templates(engine)
        wording = engine.knowledge.wording.service
        discovery = {
            "services": [
                {
                    "hook": HOOK,
                    "id": SERVICE_ID,
                    "title": wording.title,
                    "description": wording.description,
                    "usageRequirements": wording.usage_requirements,
                    "prefetch": templates,
                }
            ]
        }
        policy = ServerPolicy(settings.fhir.allowed_servers, settings.fhir.allow_http)
        return cls(
            settings,
            engine,
            store,
            recorder,
            session,
            policy,
            templates,
            orjson.dumps(discovery),
            clock or (lambda: datetime.now(UTC)),
        )

    def connect(self, fhir_server: str, token: str | None) -> FhirClient:
        fhir = self.settings.fhir
        return FhirClient(
            self.session,
            self.policy.check(fhir_server),
            token=token,
            deadline=Deadline(fhir.deadline_seconds),
            request_timeout=fhir.request_timeout_seconds,
            max_pages=fhir.max_pages,
            max_bytes=fhir.max_response_bytes,
        )


def runtime() -> Runtime:
    found: Runtime = current_app.extensions["nxp2_cds"]
    return found


def init_app(app: Flask, rt: Runtime) -> None:
    app.extensions["nxp2_cds"] = rt
    app.register_blueprint(bp)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


# -- request parsing -----------------------------------------------------------------------------------


def _json_body() -> Any:
    if request.mimetype not in JSON_MIMETYPES and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            "The request body must be JSON (Content-Type: application/json).",
            issues=[Issue("The request body must be JSON (Content-Type: application/json).", "not-supported")],
        )
    raw = request.get_data(cache=False)
    if not raw:
        raise BadRequest("The request body is empty.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON ({exc.msg} at position {exc.pos}).") from exc


def _validate(model: type[M], document: Any, prefix: str = "") -> M:
    if not isinstance(document, dict):
        raise BadRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        issues = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            path = f"{prefix}{where}" if where else prefix.rstrip(".") or "(body)"
            issues.append(Issue(f"{path}: {error['msg']}", "invalid", (path,)))
        raise BadRequest(f"The request is not a valid {model.__name__}.", issues=issues) from exc


# -- endpoints -----------------------------------------------------------------------------------------


@bp.get("/cds-services")
def discovery() -> Response:
    return Response(runtime().discovery, mimetype="application/json")


@bp.post("/cds-services/<service_id>")
def service(service_id: str) -> Response:
    rt = runtime()
    if service_id != SERVICE_ID:
        raise NotFound(f"No CDS service '{service_id}' here.", issues=[Issue("Unknown CDS service id.", "not-found")])
    hook_request = _validate(HookRequest, _json_body())
    if hook_request.hook != HOOK:
        raise BadRequest(
            f"This service answers the '{HOOK}' hook only.",
            issues=[Issue(f"hook: this service answers '{HOOK}' only", "not-supported", ("hook",))],
        )
    context = _validate(PatientViewContext, hook_request.context, prefix="context.")
    resolved: Resolved = resolve(hook_request, context, rt.templates, rt.connect)
    at = rt.clock()
    assessment = rt.engine.assess(resolved.resources, patient_id=context.patientId, at=at)
    cards = rt.engine.cards(
        assessment,
        CardContext(
            hook_instance=hook_request.hookInstance,
            patient_id=context.patientId,
            user_id=context.userId,
            evidence_url=_evidence_url(rt),
        ),
    )
    if cards:
        rt.recorder.submit([IssuedCard.from_card(card, service_id=SERVICE_ID, issued_at=at) for card in cards])
    return json_response({"cards": cards})


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    if service_id != SERVICE_ID:
        raise NotFound(f"No CDS service '{service_id}' here.", issues=[Issue("Unknown CDS service id.", "not-found")])
    items = _validate(FeedbackRequest, _json_body()).feedback
    result = rt.store.record_feedback(SERVICE_ID, items, rt.clock())
    return json_response({"received": len(items), "stored": result.stored, "duplicates": result.duplicates})


def _evidence_url(rt: Runtime) -> str | None:
    base = rt.settings.public_base_url or request.host_url.rstrip("/")
    return f"{base}/evidence" if "evidence" in current_app.view_functions else None
