"""The Runtime: everything an application's endpoints need, built once per application by
:func:`cds_service.web.app.create_app` and closed with it (:meth:`Runtime.close`).

It owns what it makes — the FHIR fetch pool and the metrics — so two applications in one process share nothing of
it; of what it is handed (the settings, the engine, the store, the recorder, the session), what the factory made for
this application alone is released with it (:attr:`Runtime.owned`), the rest belongs to whoever made it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    in_flight: int = 0
    """Requests being answered now (:meth:`enter` / :meth:`leave`, by the request middleware)."""
    _idle: threading.Condition = field(default_factory=threading.Condition, repr=False)

    CLOSE_WAIT_SECONDS = 10.0
    """How long :meth:`close` waits for the requests in flight (gunicorn's quick stop, a worker past its graceful
    timeout) before it releases what they may still use."""

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

    def enter(self) -> None:
        """A request begins."""
        with self._idle:
            self.in_flight += 1

    def leave(self) -> None:
        """A request that :meth:`enter` counted has ended (its cards handed to the recorder)."""
        with self._idle:
            self.in_flight -= 1
            if self.in_flight <= 0:
                self._idle.notify_all()

    def close(self, wait_seconds: float | None = None) -> None:
        """Release what this runtime owns, once the requests in flight have ended (waiting at most
        ``wait_seconds``, default :attr:`CLOSE_WAIT_SECONDS`: a request still running after that keeps its answer,
        and its cards still go to the spool, see :meth:`SpoolingCardRecorder.submit`): its FHIR pool's threads, then
        what the factory made for it (:attr:`owned`: the recorder writes what waits and stops its thread, the store
        closes its connections). Every release is attempted even when one fails; the first failure is raised after.
        Idempotent; other applications are not affected."""
        with self._idle:
            if self.closed:
                return
            self.closed = True
            deadline = time.monotonic() + (self.CLOSE_WAIT_SECONDS if wait_seconds is None else wait_seconds)
            while self.in_flight > 0 and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
        failure: BaseException | None = None
        for release in (lambda: self.fetch_pool.shutdown(wait=True), *self.owned):
            try:
                release()
            except Exception as exc:  # the rest is still released
                failure = failure or exc
        if failure is not None:
            raise failure

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
