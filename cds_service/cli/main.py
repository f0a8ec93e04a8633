"""The ``nxp2-cds`` command."""

from __future__ import annotations

import ipaddress
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from pydantic import ValidationError

from cds_service.cli.common import engine_or_fail, fail, settings_or_fail
from cds_service.cli.db import feedback, migrate
from cds_service.cli.evidence import evidence
from cds_service.cli.kit import call, demo, keys
from cds_service.cli.mappings import mappings
from cds_service.core.cards import CardContext
from cds_service.protocol import HookRequest, PatientViewContext
from cds_service.settings import Settings
from cds_service.telemetry import logs


def _parse_at(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--at {value!r} is not an ISO-8601 date or date-time")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nxp2-cds")
def main() -> None:
    """nxp2-cds: CDS Hooks service for anti-NXP2 positive juvenile dermatomyositis."""
    logs.configure("WARNING")  # the command's own warnings as JSON lines on stderr (never in its output on stdout)


@main.command()
@click.argument("request_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--at", "at", metavar="ISO-8601", help="Evaluation time (default: now).")
def evaluate(request_file: Path, at: str | None) -> None:
    """Evaluate a patient-view REQUEST_FILE whose prefetch holds the data; print the CDS Hooks response.

    Offline: nothing is fetched. Prefetch keys that hold an OperationOutcome are reported and ignored."""
    raw = sys.stdin.buffer.read() if str(request_file) == "-" else _read(request_file)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        fail(f"{request_file}: not JSON: {exc}")
    try:
        request = HookRequest.model_validate(document)
        context = PatientViewContext.model_validate(request.context)
    except ValidationError as exc:
        fail(f"{request_file}: not a CDS Hooks patient-view request: {_first_error(exc)}")
    if request.hook != "patient-view":
        fail(f"{request_file}: hook {request.hook!r} is not supported (patient-view only)")
    resources: list[Any] = []
    for key, value in (request.prefetch or {}).items():
        if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
            click.echo(f"nxp2-cds: prefetch {key!r} holds an OperationOutcome; ignored", err=True)
        elif value is not None:
            resources.append(value)
    engine = engine_or_fail(settings_or_fail())
    assessment = engine.assess(resources, patient_id=context.patientId, at=_parse_at(at))
    cards = engine.cards(
        assessment,
        CardContext(hook_instance=request.hookInstance, patient_id=context.patientId, user_id=context.userId),
    )
    click.echo(orjson.dumps({"cards": cards}, option=orjson.OPT_INDENT_2).decode())


@main.command()
@click.option("--host", help="Address to listen on (default: [server] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default: [server] port, 8080).")
@click.option("--workers", type=click.IntRange(1, 256), help="Worker processes (default: CPU count, at least 2).")
@click.option("--threads", type=click.IntRange(1, 256), help="Threads per worker (default: 4).")
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Apply database migrations before serving (default: yes for SQLite, no otherwise).",
)
def serve(host: str | None, port: int | None, workers: int | None, threads: int | None, migrate: bool | None) -> None:
    """Run the CDS Hooks service with the production server (nginx in front of gunicorn).

    Authentication is required by default. With no [[auth.issuers]] configured, on a loopback address the service
    runs without authentication and says so loudly; on any other address it refuses to start unless
    [auth] mode = "disabled" is set explicitly. Off loopback it also needs public_base_url (card links and the JWT
    audience never come from a caller's Host header).

    nginx reads every request whole before a worker sees it ([server] front_door; docs/deployment.md). Without nginx
    installed, on a loopback address gunicorn serves alone and says so; on any other address serve refuses to start
    unless [server] front_door = "gunicorn" is set explicitly."""
    from cds_service.server.supervisor import find_nginx, prepare_metrics_directory

    prepare_metrics_directory()  # before anything imports prometheus_client: the workers share it
    from cds_service.store.database import StoreError
    from cds_service.store.store import Store
    from cds_service.web.app import StartupError, close_app, configure_process, create_app

    settings = settings_or_fail()
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    if settings.auth.mode == "required" and not settings.auth.issuers:
        if not is_loopback(host):
            fail(
                f"refusing to serve on {host} without authentication: configure [[auth.issuers]] "
                '(or set [auth] mode = "disabled" explicitly)'
            )
        os.environ["NXP2_CDS_AUTH__MODE"] = "disabled"  # the workers inherit it
        settings = settings_or_fail()
    if not settings.public_base_url and not is_loopback(host):
        fail(
            f"refusing to serve on {host} without public_base_url: card links and the JWT audience come from it "
            "(never from a caller's Host header); set public_base_url (NXP2_CDS_PUBLIC_BASE_URL) to the URL EHRs call"
        )
    os.environ.update(NXP2_CDS_SERVER__HOST=host, NXP2_CDS_SERVER__PORT=str(port))  # workers: links on loopback
    if settings.auth.mode == "disabled":
        click.echo(
            "nxp2-cds: WARNING: AUTHENTICATION IS DISABLED - any caller can use this service. "
            "Configure [[auth.issuers]] before exposing it.",
            err=True,
        )
    door = settings.server.front_door
    nginx = None if door == "gunicorn" else find_nginx(settings.server.nginx)
    if nginx is None and door == "nginx":
        fail(
            f'[server] front_door = "nginx" but {settings.server.nginx!r} is not installed '
            "(Debian: apt-get install nginx)"
        )
    if nginx is None and door == "auto" and not is_loopback(host):
        fail(
            f"refusing to serve on {host} without nginx in front: slow clients could hold every worker thread. "
            'Install nginx (Debian: apt-get install nginx) or set [server] front_door = "gunicorn" explicitly'
        )
    if nginx is None:
        click.echo(
            "nxp2-cds: WARNING: gunicorn serves alone (no nginx in front): slow or silent clients can hold its worker "
            "threads. Install nginx for production.",
            err=True,
        )
    try:
        store = Store(settings.database_url, settings.database)
    except StoreError as exc:
        fail(str(exc))
    wanted = settings.server.migrate_on_start if migrate is None else migrate
    if wanted or (wanted is None and settings.database_url.startswith("sqlite")):
        store.migrate()
    try:
        configure_process(settings)
        close_app(create_app(settings, store=store))  # fail here, once, with a clear message, not in every worker
    except StartupError as exc:
        fail(str(exc))
    finally:
        store.dispose()
    _serve(nginx, host, port, workers, threads, settings)


def _serve(
    nginx: str | None, host: str, port: int, workers: int | None, threads: int | None, settings: Settings
) -> None:
    from cds_service.server.supervisor import free_port, serve

    if nginx is not None and port == 0:  # nginx cannot tell which port it got: choose one
        port = free_port(host)
        os.environ["NXP2_CDS_SERVER__PORT"] = str(port)
    front = "nginx in front of gunicorn" if nginx else "gunicorn alone"
    click.echo(f"nxp2-cds: serving CDS Hooks on http://{host}:{port}/cds-services ({front})", err=True)
    body, level = settings.max_body_bytes, settings.log_level
    sys.exit(serve(nginx, host, port, workers, threads, settings.server, max_body_bytes=body, log_level=level))


for _command in (migrate, feedback, evidence, keys, call, demo, mappings):
    main.add_command(_command)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


if __name__ == "__main__":
    main()
