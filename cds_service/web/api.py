"""The CDS Hooks endpoints: discovery, the patient-view service, feedback (behind the authentication guard,
:mod:`.guard`).

Parsing and validation happen here (request bodies → :mod:`protocol` models); the work is done by the pure
engine; I/O (the FHIR server, the database, the clock) stays in this module and :mod:`cds_service.fhir.prefetch`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, ValidationError

from cds_service.contracts import EXTENSION_KEY, HOOK, SERVICE_ID
from cds_service.core.cards import CardContext
from cds_service.core.i18n import negotiate
from cds_service.errors import BadRequest, Issue, NotFound, UnsupportedMediaType
from cds_service.fhir.prefetch import Resolved, resolve
from cds_service.protocol import FeedbackRequest, HookRequest, PatientViewContext
from cds_service.store.records import IssuedCard
from cds_service.web import decode
from cds_service.web.guard import require_client
from cds_service.web.runtime import Runtime, runtime, service_base_url

JSON_MIMETYPES = frozenset({"application/json", "application/fhir+json"})

bp = Blueprint("cds_hooks", __name__)
bp.before_request(require_client)
M = TypeVar("M", bound=BaseModel)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


# -- request parsing -----------------------------------------------------------------------------------


def _json_body(parse: Callable[[bytes | bytearray], Any] = decode.loads) -> Any:
    """The request body, JSON, read by ``parse`` (default: the whole body with orjson; the hook reads it with
    :func:`decode.hook_body`). Raises :class:`BadRequest` for an empty body or invalid JSON."""
    if request.mimetype not in JSON_MIMETYPES and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            "The request body must be JSON (Content-Type: application/json).",
            issues=[Issue("The request body must be JSON (Content-Type: application/json).", "not-supported")],
        )
    length = request.content_length
    raw: bytes | bytearray
    if length:  # into one buffer of the announced size, a megabyte at a time: never a second copy of the body
        raw = bytearray(length)
        readinto = request.stream.readinto  # type: ignore[attr-defined]  # werkzeug's LimitedStream
        with memoryview(raw) as view:
            got = 0
            while got < length and (read := readinto(view[got : got + (1 << 20)])):
                got += read
        del raw[got:]
    else:
        raw = request.get_data(cache=False)
    if not raw:
        raise BadRequest("The request body is empty.")
    return parse(raw)


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
    rt = runtime()
    response = Response(rt.discovery[request_language(rt)], mimetype="application/json")
    response.vary.add("Accept-Language")
    return response


def request_language(rt: Runtime) -> str:
    """The request's language: the best supported one its ``Accept-Language`` asks for, else the site's."""
    return negotiate(list(request.accept_languages), rt.engine.languages, rt.engine.language)


@bp.post("/cds-services/<service_id>")
def service(service_id: str) -> Response:
    rt = runtime()
    if service_id != SERVICE_ID:
        raise NotFound(f"No CDS service '{service_id}' here.", issues=[Issue("Unknown CDS service id.", "not-found")])
    body: decode.HookBody = _json_body(lambda raw: decode.hook_body(raw, rt.templates))
    hook_request = _validate(HookRequest, body.document)
    if hook_request.hook != HOOK:
        raise BadRequest(
            f"This service answers the '{HOOK}' hook only.",
            issues=[Issue(f"hook: this service answers '{HOOK}' only", "not-supported", ("hook",))],
        )
    context = _validate(PatientViewContext, hook_request.context, prefix="context.")
    g.log_fields["hook_instance"] = (
        hook_request.hookInstance if _UUID.match(hook_request.hookInstance) else "(not a uuid)"
    )
    resolved: Resolved = resolve(
        hook_request,
        context,
        rt.templates,
        rt.connect,
        metrics=rt.metrics,
        max_resources=rt.settings.max_prefetch_resources,
        originals=body.originals,
    )
    g.log_fields.update(
        prefetch_fetched=resolved.fetched, prefetch_paged=resolved.paged, fhir_requests=resolved.fhir_requests
    )
    at = rt.clock()
    try:
        assessment = rt.engine.assess(resolved.resources, patient_id=context.patientId, at=at)
    except decode.Unreadable:  # a deciding resource's own JSON holds a number orjson refuses: as before, a 400
        body.refuse()
    cards = rt.engine.cards(
        assessment,
        CardContext(
            hook_instance=hook_request.hookInstance,
            patient_id=context.patientId,
            user_id=context.userId,
            evidence_url=_evidence_url(rt),
            language=request_language(rt),
        ),
    )
    if cards:
        rt.recorder.submit([IssuedCard.from_card(card, service_id=SERVICE_ID, issued_at=at) for card in cards])
        for card in cards:
            extension = card["extension"][EXTENSION_KEY]
            rt.metrics.cards.labels(extension["outcome"] or extension["cardType"], card["indicator"]).inc()
    findings = assessment.findings
    g.log_fields.update(
        resources_seen=findings.resources_seen,
        resources_used=findings.resources_used,
        eligibility=assessment.eligibility,
        decision=assessment.decision,
        cards=[card["indicator"] for card in cards],
    )
    rt.metrics.decisions.labels(assessment.decision).inc()
    response = json_response({"cards": cards})
    response.vary.add("Accept-Language")
    return response


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    if service_id != SERVICE_ID:
        raise NotFound(f"No CDS service '{service_id}' here.", issues=[Issue("Unknown CDS service id.", "not-found")])
    items = _validate(FeedbackRequest, _json_body()).feedback
    result = rt.store.record_feedback(SERVICE_ID, items, rt.clock())
    for item in items:
        rt.metrics.feedback.labels(item.outcome).inc()
    rt.metrics.feedback_duplicates.inc(result.duplicates)
    g.log_fields.update(feedback_received=len(items), feedback_stored=result.stored)
    return json_response({"received": len(items), "stored": result.stored, "duplicates": result.duplicates})


def _evidence_url(rt: Runtime) -> str | None:
    base = service_base_url(rt.settings)
    return f"{base}/evidence" if "evidence.page" in current_app.view_functions else None
