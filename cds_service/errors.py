"""One exception tree for everything the service answers with an error, rendered as a FHIR OperationOutcome.

::

    ServiceError (500 exception)
    ├── BadRequest (400 invalid)                 malformed JSON, not a CDS Hooks request, bad prefetch value
    ├── Unauthorized (401 login)                 CDS client JWT missing or not valid (no detail is given)
    ├── NotFound (404 not-found)                 unknown service id or path
    ├── MethodNotAllowed (405 not-supported)
    ├── PreconditionFailed (412 incomplete)      prefetch data missing and not obtainable; names the keys
    ├── PayloadTooLarge (413 too-long)
    ├── UnsupportedMediaType (415 not-supported)
    └── ServiceUnavailable (503 transient)       the database is unavailable for now; carries Retry-After

Every error leaves the service as ``{"resourceType": "OperationOutcome", "issue": [...]}`` with the status above;
never a stack trace. Messages never contain patient data: they name fields and keys, not values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

OPERATION_OUTCOME_MIMETYPE = "application/fhir+json"


@dataclass(frozen=True)
class Issue:
    diagnostics: str
    code: str | None = None
    expression: tuple[str, ...] = ()
    severity: str = "error"


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"

    def __init__(self, message: str, *, issues: Sequence[Issue] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.issues = tuple(issues) or (Issue(message),)
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues, default_code=self.code)


class BadRequest(ServiceError):
    status = 400
    code = "invalid"


class Unauthorized(ServiceError):
    status = 401
    code = "login"


class NotFound(ServiceError):
    status = 404
    code = "not-found"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "not-supported"


class PreconditionFailed(ServiceError):
    """Required prefetch data is missing and the service could not fetch it (CDS Hooks: SHALL answer 412)."""

    status = 412
    code = "incomplete"

    def __init__(self, message: str, *, keys: Sequence[str], issues: Sequence[Issue] = ()) -> None:
        super().__init__(message, issues=issues)
        self.keys = tuple(keys)


class PayloadTooLarge(ServiceError):
    status = 413
    code = "too-long"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "not-supported"


class ServiceUnavailable(ServiceError):
    """Something the request needs (the database) is unavailable for now: 503 with ``Retry-After`` (seconds)."""

    status = 503
    code = "transient"

    def __init__(self, message: str, *, retry_after: int, issues: Sequence[Issue] = ()) -> None:
        super().__init__(message, issues=issues, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


def operation_outcome(issues: Sequence[Issue], *, default_code: str = "exception") -> dict[str, Any]:
    rendered = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code or default_code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = list(issue.expression)
        rendered.append(item)
    return {"resourceType": "OperationOutcome", "issue": rendered}


def outcome_response(status: int, outcome: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(orjson.dumps(outcome), status=status, mimetype=OPERATION_OUTCOME_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


_HTTP_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    408: "timeout",
    411: "invalid",
    413: "too-long",
    414: "too-long",
    415: "not-supported",
    429: "throttled",
    503: "transient",
}


def init_app(app: Flask) -> None:
    """Render every error, the framework's included, as an OperationOutcome."""

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        return outcome_response(error.status, error.outcome(), error.headers)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {
            404: "No such endpoint.",
            405: "Method not allowed on this endpoint.",
            413: "The request body is larger than this service accepts.",
        }.get(status, error.name)
        outcome = operation_outcome([Issue(message, _HTTP_CODES.get(status, "exception"))])
        headers = {}
        if status == 405:
            allowed = error.get_headers()
            headers = {k: v for k, v in allowed if k.lower() == "allow"}
        return outcome_response(status, outcome, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error", exc_info=error)
        outcome = operation_outcome([Issue("Internal error; the request was not processed.", "exception")])
        return outcome_response(500, outcome)
