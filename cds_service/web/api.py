"""The CDS Hooks endpoints: discovery, the patient-view service, feedback.

Parsing and validation happen here (request bodies → :mod:`protocol` models); the work is done by the pure
engine; I/O (the FHIR server, the database, the clock) stays in this module and :mod:`cds_service.fhir.prefetch`.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import requests
import structlog
from flask import Blueprint, Flask, Response, current_app, g, request
from pydantic import BaseModel, ValidationError

from cds_service.contracts import EXTENSION_KEY, HOOK, SERVICE_ID
from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from cds_service.core.i18n import negotiate
from cds_service.errors import BadRequest, Issue, NotFound, UnsupportedMediaType
from cds_service.fhir.client import Deadline, FetchPool, FhirClient, ServerPolicy
from cds_service.fhir.prefetch import Resolved, build_templates, resolve
from cds_service.protocol import FeedbackRequest, HookRequest, PatientViewContext
from cds_service.settings import Settings
from cds_service.store.recorder import CardRecorder
from cds_service.store.records import IssuedCard
from cds_service.store.store import Store
from cds_service.telemetry.metrics import Metrics
from cds_service.web import decode, openapi
from cds_service.web.auth import Authenticator
from cds_service.web.front_door import FRONT_DOOR_HEADER, front_door_attempt

JSON_MIMETYPES = frozenset({"application/json", "application/fhir+json"})

bp = Blueprint("cds_hooks", __name__)
docs = Blueprint("docs", __name__)
M = TypeVar("M", bound=BaseModel)
log = structlog.get_logger("nxp2_cds.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class Runtime:
    """Everything the endpoints need, built once per worker process by :func:`cds_service.web.app.create_app`."""

    settings: Settings
    engine: Engine
    store: Store
    recorder: CardRecorder
    session: requests.Session
    policy: ServerPolicy
    templates: dict[str, str]
    discovery: dict[str, bytes]
    """The discovery document in every language."""
    openapi: bytes
    clock: Callable[[], datetime]
    auth: Authenticator | None
    metrics: Metrics
    """This application's collectors (``/metrics``)."""
    fetch_pool: FetchPool
    """The threads this application's FHIR clients send parallel GETs on; shut down by :meth:`close`."""

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine,
        store: Store,
        recorder: CardRecorder,
        session: requests.Session,
        clock: Callable[[], datetime] | None = None,
        auth: Authenticator | None = None,
        metrics: Metrics | None = None,
    ) -> Runtime:
        """``metrics``: the application's (its authenticator counts there too); a new one when not given."""
        templates = build_templates(engine)
        discovery: dict[str, bytes] = {}
        for language in engine.languages:
            wording = engine.knowledge_for(language).wording.service
            document = {
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
            discovery[language] = orjson.dumps(document)
        policy = ServerPolicy(settings.fhir.allowed_servers, settings.fhir.allow_http)
        document = openapi.build(SERVICE_ID, HOOK, auth_required=auth is not None and auth.required)
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            recorder=recorder,
            session=session,
            policy=policy,
            templates=templates,
            discovery=discovery,
            openapi=orjson.dumps(document),
            clock=clock or (lambda: datetime.now(UTC)),
            auth=auth,
            metrics=metrics or Metrics(),
            fetch_pool=FetchPool(),
        )

    def connect(self, fhir_server: str, token: str | None) -> FhirClient:
        """A client for one hook call to ``fhir_server`` (checked against the allowlist first: :class:`FhirError`
        when it is not allowed), under the ``[fhir]`` settings, on this runtime's pool."""
        fhir = self.settings.fhir
        return FhirClient(
            self.session,
            self.policy.check(fhir_server),
            token=token,
            deadline=Deadline(fhir.deadline_seconds),
            request_timeout=fhir.request_timeout_seconds,
            max_pages=fhir.max_pages,
            max_bytes=fhir.max_response_bytes,
            pool=self.fetch_pool,
        )

    def close(self) -> None:
        """Release what this runtime owns: its FHIR pool's threads (the requests in flight finish first). Later
        parallel fetches are refused. Idempotent; other applications are not affected."""
        self.fetch_pool.shutdown(wait=True)


def runtime() -> Runtime:
    return runtime_of(current_app)


def runtime_of(app: Flask) -> Runtime:
    found: Runtime = app.extensions["nxp2_cds"]
    return found


def init_app(app: Flask, rt: Runtime) -> None:
    app.extensions["nxp2_cds"] = rt
    app.register_blueprint(bp)
    app.register_blueprint(docs)
    app.before_request(_start_request)
    app.after_request(_log_request)
    app.teardown_request(_end_request)


# -- per-request bookkeeping: request id, structured log line ------------------------------------------


def _start_request() -> None:
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


_UNCOUNTED = frozenset({"/metrics", "/healthz", "/readyz"})
"""Probes and scrapes are not counted as traffic (they would drown it)."""


def _end_request(_: BaseException | None) -> None:
    structlog.contextvars.clear_contextvars()


@bp.before_request
def _authenticate() -> None:
    """Every CDS Hooks endpoint (discovery, service, feedback) needs a valid client JWT; CORS preflight does not."""
    rt = runtime()
    if request.method == "OPTIONS" or rt.auth is None or not rt.auth.required:
        return
    secret = rt.settings.server.front_door_secret
    attempt = front_door_attempt(request.headers.get(FRONT_DOOR_HEADER), secret.get_secret_value() if secret else None)
    identity = rt.auth.authenticate(
        request.headers.get("Authorization"), service_base_url(rt.settings) + request.path, attempt=attempt
    )
    structlog.contextvars.bind_contextvars(client_iss=identity.issuer, client_tenant=identity.tenant)


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


@docs.get("/openapi.json")
def openapi_document() -> Response:
    return Response(runtime().openapi, mimetype="application/json")


@docs.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers. Never touches the database (an outage must not get workers restarted)."""
    return json_response({"status": "ok"})


@docs.get("/readyz")
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


@docs.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = runtime().metrics.render()
    return Response(body, content_type=content_type)


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


def service_base_url(settings: Settings) -> str:
    """The service's own URL, for card links and the JWT audience: ``public_base_url``, else the address it is
    bound to (``[server] host`` and ``port``; ``nxp2-cds serve`` refuses to start off loopback without
    ``public_base_url``). Never the request's ``Host``: a caller must not choose where links point or which audience
    a token must carry."""
    if settings.public_base_url:
        return settings.public_base_url
    host = settings.server.host.strip("[]")
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.server.port}"


def _evidence_url(rt: Runtime) -> str | None:
    base = service_base_url(rt.settings)
    return f"{base}/evidence" if "evidence.page" in current_app.view_functions else None
