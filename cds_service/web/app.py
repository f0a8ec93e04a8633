"""Building the WSGI application: :func:`create_app`, the one factory (gunicorn workers, tests, the CLI)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from flask import Flask
from flask_cors import CORS

from cds_service import errors
from cds_service.core.engine import Engine
from cds_service.core.knowledge import KnowledgeError
from cds_service.fhir.client import new_session
from cds_service.settings import SettingsError, load_settings
from cds_service.store.database import StoreError
from cds_service.store.spool import spooling_recorder
from cds_service.store.store import Store
from cds_service.telemetry import logs
from cds_service.telemetry.metrics import Metrics
from cds_service.web import api, evidence_page, middleware, ops
from cds_service.web.auth import Authenticator
from cds_service.web.runtime import Runtime, runtime_of

if TYPE_CHECKING:
    import requests
    from flask import Flask

    from cds_service.core.engine import Engine
    from cds_service.settings import Settings
    from cds_service.store.recorder import CardRecorder
    from cds_service.store.store import Store


class StartupError(RuntimeError):
    """The service cannot start with this configuration; the message says what to do."""


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    store: Store | None = None,
    recorder: CardRecorder | None = None,
    session: requests.Session | None = None,
    clock: Callable[[], datetime] | None = None,
    migrate: bool = False,
    metrics: Metrics | None = None,
) -> Flask:
    """Build the WSGI application. Everything is loaded and validated here, once per process: settings, the
    knowledge base and value sets, the database (whose schema must be current, or ``migrate=True``). The
    application owns its metrics and its FHIR pool (its :class:`~cds_service.web.runtime.Runtime`), and the store,
    recorder and session it makes when none is given; nothing process-wide is changed. :func:`close_app` releases
    them.

    ``metrics``: the application's collectors (new ones when not given). The store and the recorder made here count
    into them; a store or recorder handed in counts where its maker said (give it the same ``metrics`` to see its
    database faults and spool in this application's ``/metrics``)."""
    try:
        settings = settings or load_settings()
        engine = engine or Engine.load(
            settings.knowledge_file, settings.mappings.local_codes, language=settings.cards.language
        )
    except (SettingsError, KnowledgeError) as exc:
        raise StartupError(str(exc)) from exc
    metrics = Metrics() if metrics is None else metrics
    owned: list[
        Callable[[], None]
    ] = []  # what close_app releases, in reverse order of making: recorder, store, session
    try:
        if session is None:
            session = new_session()
            owned.append(session.close)
        if store is None:
            store = Store(settings.database_url, settings.database, metrics=metrics)
            owned.append(store.dispose)
        try:
            authenticator = Authenticator(settings.auth, replay_store=store, session=session, metrics=metrics)
        except ValueError as exc:
            raise StartupError(f"auth: {exc}") from exc
        log = structlog.get_logger("nxp2_cds")
        if not authenticator.required:
            log.warning("AUTHENTICATION DISABLED: any caller can use this service; use only on a loopback address")
        elif not settings.auth.issuers:
            log.warning("no [[auth.issuers]] configured: every call will be refused with 401")
        unmapped = engine.unmapped_by_code()
        if unmapped:
            log.warning(
                "PREDICTORS WITHOUT A SITE CODE: recognised by name only (or not at all); "
                "run `nxp2-cds mappings survey --fhir-server URL` and add [mappings.local_codes]",
                predictors=sorted(unmapped),
            )
        if migrate:
            store.migrate()
        else:
            schema = store.schema_state()
            if schema == "not-current":
                raise StartupError("the database schema is not current: run `nxp2-cds migrate` first")
            if schema == "unreachable":  # a worker restarted during an outage serves hooks; /readyz tells the rest
                log.warning("DATABASE UNREACHABLE AT START-UP: serving anyway; the schema is checked by /readyz")
        if recorder is None:
            try:
                recorder = spooling_recorder(store, metrics)
            except StoreError as exc:
                raise StartupError(str(exc)) from exc
            owned.append(recorder.close)
        app = Flask(__name__)
        app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
        app.json.sort_keys = False  # type: ignore[attr-defined]
        CORS(
            app,
            resources={r"/cds-services*": {}},
            origins=list(settings.cors.allowed_origins),
            allow_headers=["Authorization", "Content-Type"],
            methods=["GET", "POST", "OPTIONS"],
            max_age=86400,
        )
        errors.init_app(app)
        runtime = Runtime.build(settings, engine, store, recorder, session, clock, authenticator, metrics, owned[::-1])
        runtime.install(app)
        middleware.init_app(app)
        app.register_blueprint(api.bp)
        app.register_blueprint(ops.bp)
        app.register_blueprint(evidence_page.bp)
    except BaseException:
        _release(owned[::-1])  # nothing half-built stays open: the caller gets the error alone
        raise
    return app


def _release(releases: list[Callable[[], None]]) -> None:
    for release in releases:
        with contextlib.suppress(Exception):
            release()


def close_app(app: Flask) -> None:
    """Release what the application owns, when it will answer no more requests (gunicorn's ``worker_exit`` in
    ``nxp2-cds serve``, a test done with it): its FHIR pool, then the recorder it made (what waits is written to the
    database, or stays in the spool for the next process; its thread stops), the store and the session it made.
    What it was handed (store, recorder, session) its maker closes. Idempotent; other applications in the process
    are not affected."""
    runtime_of(app).close()


def configure_process(settings: Settings) -> None:
    """What a serving process does once, before it builds its application (``nxp2-cds serve``'s workers, the CLI):
    JSON logs on stderr at the configured level. The root logger belongs to the process, not to an application, so
    :func:`create_app` leaves it alone."""
    logs.configure(settings.log_level)


def freeze_startup_heap() -> None:
    """Once the application is built: everything loaded so far lives as long as the process, so keep it out of the
    garbage collector's scans (a request that allocates much, a large prefetch, then does not pay for traversing
    the models and value sets). Process-wide, so the server calls it, never the factory."""
    gc.collect()
    gc.freeze()
