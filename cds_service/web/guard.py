"""The authentication guard in front of the CDS Hooks endpoints (discovery, the service, feedback): the client's
JWT is verified (:class:`~cds_service.web.auth.Authenticator`) for the audience this service is, before any of
them runs. CORS preflight, the evidence page and the operations endpoints are not guarded."""

from __future__ import annotations

import structlog
from flask import request

from cds_service.web.front_door import FRONT_DOOR_HEADER, front_door_attempt
from cds_service.web.runtime import runtime, service_base_url


def require_client() -> None:
    """A ``before_request`` hook: every CDS Hooks endpoint needs a valid client JWT when authentication is
    required (:class:`~cds_service.errors.Unauthorized` otherwise); CORS preflight does not. The caller's issuer and
    tenant are bound to the request's log lines."""
    rt = runtime()
    if request.method == "OPTIONS" or rt.auth is None or not rt.auth.required:
        return
    secret = rt.settings.server.front_door_secret
    attempt = front_door_attempt(request.headers.get(FRONT_DOOR_HEADER), secret.get_secret_value() if secret else None)
    identity = rt.auth.authenticate(
        request.headers.get("Authorization"), service_base_url(rt.settings) + request.path, attempt=attempt
    )
    structlog.contextvars.bind_contextvars(client_iss=identity.issuer, client_tenant=identity.tenant)
