"""The Runtime: everything an application's endpoints need, built once per application by
:func:`cds_service.web.app.create_app` and closed with it (:meth:`Runtime.close`).

It owns what it makes — the FHIR fetch pool and the metrics — so two applications in one process share nothing of
it; of what it is handed (the settings, the engine, the store, the recorder, the session), what the factory made for
this application alone is released with it (:attr:`Runtime.owned`), the rest belongs to whoever made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import requests
from flask import Flask, current_app

from cds_service.contracts import HOOK, SERVICE_ID
from cds_service.core.engine import Engine
from cds_service.fhir.client import Deadline, FetchPool, FhirClient, ServerPolicy
from cds_service.fhir.prefetch import build_templates
from cds_service.settings import Settings
from cds_service.store.recorder import CardRecorder
from cds_service.store.store import Store
from cds_service.telemetry.metrics import Metrics
from cds_service.web import openapi
from cds_service.web.auth import Authenticator

EXTENSION = "nxp2_cds"
"""The runtime's key in ``app.extensions``."""


@dataclass
class Runtime:
    """Everything the endpoints need, built once per application (in each worker process) by
    :func:`cds_service.web.app.create_app`."""

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
    owned: tuple[Callable[[], None], ...] = ()
    """How to release what the factory made for this application alone (its recorder, then its store and session),
    called in this order by :meth:`close`."""
    closed: bool = False

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
        owned: Sequence[Callable[[], None]] = (),
    ) -> Runtime:
        """``metrics``: the application's (its authenticator, store and recorder count there too); a new one when
        not given. ``owned``: what :meth:`close` releases besides the FHIR pool (see :attr:`owned`)."""
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
            owned=tuple(owned),
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
        """Release what this runtime owns: its FHIR pool's threads (the requests in flight finish first; later
        parallel fetches are refused), then what the factory made for it (:attr:`owned`: the recorder writes what
        waits and stops its thread, the store closes its connections). Idempotent; other applications are not
        affected."""
        if self.closed:
            return
        self.closed = True
        self.fetch_pool.shutdown(wait=True)
        for release in self.owned:
            release()

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self


def runtime() -> Runtime:
    """The current application's runtime (within a request or an application context)."""
    return runtime_of(current_app)


def runtime_of(app: Flask) -> Runtime:
    found: Runtime = app.extensions[EXTENSION]
    return found


def service_base_url(settings: Settings) -> str:
    """The service's own URL, for card links and the JWT audience: ``public_base_url``, else the address it is
    bound to (``[server] host`` and ``port``; ``nxp2-cds serve`` refuses to start off loopback without
    ``public_base_url``). Never the request's ``Host``: a caller must not choose where links point or which audience
    a token must carry."""
    if settings.public_base_url:
        return settings.public_base_url
    host = settings.server.host.strip("[]")
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.server.port}"
