"""The production server: nginx in front of gunicorn (threaded workers) running :func:`cds_service.web.app.create_app`.

The front door (``[server] front_door``, docs/deployment.md "Front door"):

- ``nginx`` (the default where nginx is installed, and in the container image): nginx listens on the address and
  reads each request whole — headers within ``header_timeout_seconds``, bodies with at most ``body_timeout_seconds``
  between reads, larger than 64 KB into a file in the runtime folder — before handing it to a gunicorn worker over a
  Unix socket, and buffers the response the same way. A slow or silent client holds an nginx connection (a few KB),
  never a worker thread. Bodies over ``max_body_bytes`` (chunked ones included) get 413; nginx's own errors are FHIR
  OperationOutcome JSON.
- ``gunicorn``: gunicorn alone on the address, as before (development only: a slow client holds a worker thread).

Each gunicorn worker builds its own application after the fork (no shared connection pools or threads across
processes) and wraps it in :class:`RequestGuard` (the memory budget, 413 for chunked bodies), which counts what it
refuses in that application's metrics; when the worker stops, gunicorn's ``worker_exit`` hook closes the application
(:func:`~cds_service.web.app.close_app`: its recorder writes what waits). Workers default to the CPU count (at least
2) and threads to 4. Prometheus samples of all workers are collected through a shared directory (see :mod:`metrics`).

Shutdown (nginx): on SIGTERM or SIGINT ``/readyz`` answers 503 at once and every answer says ``Connection: close`` (so
keep-alive clients go elsewhere); after ``shutdown_delay_seconds`` nginx closes its listener and lets the requests in
flight finish (at most ``graceful_timeout_seconds``); then the workers stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import io
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from gunicorn.app.base import BaseApplication

from cds_service.settings import ServerSettings
from cds_service.telemetry import logs
from cds_service.telemetry.sinks import NULL_METRICS, RefusalMetrics
from cds_service.web.front_door import FRONT_DOOR_HEADER, FRONT_DOOR_SECRET_ENV

DEFAULT_THREADS = 4
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - gunicorn's documented place for worker heartbeats in containers
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # also in metrics.py, which must not be imported before it is set
NGINX_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
BODY_IN_MEMORY = 64 * 1024
"""nginx keeps request bodies up to this size in memory; larger ones wait in a file in the runtime folder."""
TRIM_AFTER_BYTES = 1_000_000
"""After a request with a body this large, freed memory is handed back to the system (``malloc_trim``)."""
OUTCOME_MIMETYPE = "application/fhir+json"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


# -- the memory budget and body limits, in each worker --------------------------------------------------------------


def outcome_body(diagnostics: str, code: str) -> bytes:
    return orjson.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}
    )


TOO_LARGE = "The request body is larger than this service accepts."
BUSY = "The service is working on other large requests; retry after {seconds} s."


class RequestGuard:
    """WSGI middleware in each worker, in front of the application.

    - A body whose length is given (nginx always gives it) is admitted only while the bodies of the requests this
      worker already works on leave room for it within ``budget_bytes``; otherwise 503 with ``Retry-After``, before a
      byte of it is read. A body alone is always admitted (up to ``max_body_bytes``).
    - A chunked body (no length; gunicorn alone) is read up to ``max_body_bytes``: one byte more is 413.
    - After a large request, freed memory goes back to the system, so a burst does not leave the worker swollen.

    Refusals are counted in ``metrics`` (``nxp2_cds_requests_refused_total``): the guarded application's
    (:class:`~cds_service.telemetry.metrics.Metrics`), or nowhere when not given.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        max_body_bytes: int,
        budget_bytes: int,
        retry_after_seconds: int,
        metrics: RefusalMetrics = NULL_METRICS,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.budget_bytes = budget_bytes
        self.retry_after = str(retry_after_seconds)
        self._lock = threading.Lock()
        self._inflight = 0

    @property
    def inflight_bytes(self) -> int:
        return self._inflight

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = _content_length(environ)
        if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = _read_at_most(environ["wsgi.input"], self.max_body_bytes)
            if body is None:
                return self._refuse(start_response, "413 Request Entity Too Large", TOO_LARGE, "too-long", "too-large")
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ["wsgi.input_terminated"] = False
            length = len(body)
        if length is not None and length > self.max_body_bytes:
            return self._refuse(start_response, "413 Request Entity Too Large", TOO_LARGE, "too-long", "too-large")
        if not length:
            return self.app(environ, start_response)
        if not self._reserve(length):
            message = BUSY.format(seconds=self.retry_after)
            return self._refuse(
                start_response, "503 Service Unavailable", message, "transient", "memory-budget", busy=True
            )
        try:
            return self.app(environ, start_response)  # Flask has popped the request (and its data) when this returns
        finally:
            self._release(length)

    def _reserve(self, length: int) -> bool:
        with self._lock:
            if self._inflight and self._inflight + length > self.budget_bytes:
                return False
            self._inflight += length
            return True

    def _release(self, length: int) -> None:
        with self._lock:
            self._inflight -= length
            idle = self._inflight == 0
        if length >= TRIM_AFTER_BYTES and idle:
            trim_memory()

    def _refuse(
        self, start_response: StartResponse, status: str, message: str, code: str, reason: str, busy: bool = False
    ) -> list[bytes]:
        self.metrics.count_refused(reason)
        body = outcome_body(message, code)
        headers = [("Content-Type", OUTCOME_MIMETYPE), ("Content-Length", str(len(body)))]
        if busy:
            headers.append(("Retry-After", self.retry_after))
        else:
            headers.append(("Connection", "close"))  # the rest of the body is not read
        start_response(status, headers)
        return [body]


def _content_length(environ: Mapping[str, Any]) -> int | None:
    try:
        value = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return value if value >= 0 else None


def _read_at_most(stream: Any, limit: int) -> bytes | None:
    """The whole stream, or None when it holds more than ``limit`` bytes (reading stops one chunk past it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


_MALLOC_TRIM: Any = None


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Few malloc arenas for this process and the ones it forks: threads then share freed memory instead of each
    keeping its own (glibc ``mallopt(M_ARENA_MAX)``; nothing elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX


# -- gunicorn -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    budget_bytes: int
    retry_after_seconds: int


class ConfiguredApplication(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints: its base is Any
    """gunicorn run with the settings ``options`` (those of gunicorn_options); a subclass's ``load`` returns the
    WSGI application each worker serves."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)


class _Application(ConfiguredApplication):
    def __init__(self, options: Mapping[str, Any], limits: Limits | None = None) -> None:
        self._limits = limits
        self.served: Any = None
        """The Flask application this worker built (``load``), closed by the ``worker_exit`` hook."""
        super().__init__(options)

    def load(self) -> Any:
        # here, not at the top: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is first imported
        from cds_service.settings import load_settings
        from cds_service.web.app import configure_process, create_app, freeze_startup_heap
        from cds_service.web.runtime import runtime_of

        settings = load_settings()
        configure_process(settings)
        app = self.served = create_app(settings)
        freeze_startup_heap()
        if self._limits is None:
            return app
        return RequestGuard(
            app.wsgi_app,
            max_body_bytes=self._limits.max_body_bytes,
            budget_bytes=self._limits.budget_bytes,
            retry_after_seconds=self._limits.retry_after_seconds,
            metrics=runtime_of(app).metrics,
        )


def _child_exit(_server: Any, worker: Any) -> None:
    from cds_service.telemetry.metrics import worker_exited

    worker_exited(worker.pid)


def _worker_exit(_server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook, in the worker once it has stopped serving: close the application it built
    (its recorder writes what waits to the database, or leaves it in the spool for another worker). Nothing when the
    worker never built one (it failed to boot, or serves another gunicorn application, as the benchmarks' do)."""
    served = getattr(worker.app, "served", None)
    if served is not None:
        from cds_service.web.app import close_app

        close_app(served)


def gunicorn_options(
    host: str,
    port: int,
    workers: int | None = None,
    threads: int | None = None,
    server: ServerSettings | None = None,
    log_level: str = "INFO",
    *,
    unix_socket: Path | None = None,
) -> dict[str, Any]:
    """gunicorn's settings: on ``host``:``port``, or behind nginx on ``unix_socket``."""
    settings = server or ServerSettings()
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options: dict[str, Any] = {
        "bind": f"unix:{unix_socket}" if unix_socket else bind,
        "workers": workers or settings.workers or default_workers(),
        "threads": threads or settings.threads or DEFAULT_THREADS,
        "worker_class": "gthread",
        "timeout": settings.timeout_seconds,
        "graceful_timeout": settings.graceful_timeout_seconds,
        "keepalive": 5,  # behind nginx each connection carries one request (see nginx_config)
        "accesslog": None,
        "errorlog": "-",
        "loglevel": log_level.lower(),
        "logconfig_dict": logs.gunicorn_logconfig(log_level),
        "proc_name": "nxp2-cds",
        "limit_request_line": 8190,
        "limit_request_field_size": 16380,
        "control_socket_disable": True,  # no socket in $HOME: read-only root filesystems stay read-only
        "child_exit": _child_exit,
        "worker_exit": _worker_exit,
    }
    if SHARED_MEMORY.is_dir():  # heartbeat files in memory, not on a (possibly read-only) disk
        options["worker_tmp_dir"] = str(SHARED_MEMORY)
    return options


_MULTIPROC_FILE = re.compile(
    r"(?:counter|gauge_(?:all|liveall|min|max|sum|livesum|mostrecent|livemostrecent)|histogram|summary)_\d+\.db"
)
"""The names prometheus_client's multiprocess mode gives its files (``<kind>_<pid>.db``)."""


def prepare_metrics_directory() -> None:
    """Give the workers a shared, empty Prometheus directory (unless the operator chose one). Must run before
    anything imports prometheus_client in this process."""
    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="nxp2-cds-metrics-")
        return
    directory = Path(os.environ[MULTIPROC_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        if _MULTIPROC_FILE.fullmatch(stale.name):  # only prometheus_client's own files: nothing else there is ours
            stale.unlink()


def run(options: Mapping[str, Any], limits: Limits | None = None) -> None:
    """gunicorn in this process, until it stops."""
    _Application(options, limits).run()


# -- nginx ----------------------------------------------------------------------------------------------------------


def find_nginx(name: str = "nginx") -> str | None:
    """The nginx executable: ``name`` as a path, on PATH, or in the usual sbin folders."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(NGINX_DIRS))


_NGINX_ERRORS: dict[int, tuple[int, str, str]] = {
    # nginx's status → (status answered, FHIR issue code, diagnostics)
    400: (400, "invalid", "The request is not valid HTTP."),
    408: (408, "timeout", "The request was not received in time."),
    411: (411, "invalid", "The request needs a Content-Length or a chunked body."),
    413: (413, "too-long", TOO_LARGE),
    414: (414, "too-long", "The request line is too long."),
    494: (431, "too-long", "A request header is too long."),
    500: (500, "exception", "Internal error; the request was not processed."),
    501: (501, "not-supported", "This transfer encoding is not supported."),
    502: (503, "transient", "The service is restarting a worker; retry shortly."),
    503: (503, "transient", "The service is busy; retry shortly."),
    504: (504, "timeout", "The service did not answer in time."),
    505: (505, "not-supported", "This HTTP version is not supported."),
}


ERROR_PREFIX = "/.nxp2-cds-front-door-error/"
DRAIN_PREFIX = "/.nxp2-cds-front-door-draining"


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_config(
    host: str,
    port: int,
    runtime: Path,
    settings: ServerSettings,
    *,
    max_body_bytes: int,
    unix_socket: Path,
    secret: str,
) -> str:
    """The nginx configuration: listens on ``host``:``port``, buffers each request and response whole, hands requests
    to the workers on ``unix_socket``; its own errors are OperationOutcome JSON.

    A request whose worker dies before answering (``kill -9``, out of memory) is handed once more to the socket, where
    another worker takes it (the socket is listed twice: nginx hands a failed request to the *next* server). Every
    request carries ``X-Nxp2-Front-Door: <secret> $request_id`` (a client's own header of that name is replaced), so
    the JWT replay check knows the second hand-over for the same request, not a replay (:mod:`.front_door`).
    Only a connection error counts: a slow answer or an error status is never retried. Each request gets a connection
    of its own to the socket (no idle connections kept to the workers): a kept connection may belong to the worker
    that just died, and handing the request on over another such one would spend the second try on the dead worker
    too (seen: 1 hook call in about 160 answered 503 across a kill); a new connection is always taken by a live
    worker."""
    listen = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
    draining = runtime / "draining"
    error_pages = []
    for status, (answered, code, message) in _NGINX_ERRORS.items():
        body = _nginx_string(outcome_body(message, code).decode())
        retry = f"add_header Retry-After {settings.retry_after_seconds} always; " if answered == 503 else ""
        # a URI, not a named location: a request whose line did not parse has no URI of its own to carry along
        error_pages.append(f"error_page {status} = {ERROR_PREFIX}{status};")
        error_pages.append(f"location = {ERROR_PREFIX}{status} {{ internal; {retry}return {answered} {body}; }}")
    not_ready = _nginx_string(
        orjson.dumps({"status": "not ready", "checks": {"shutting_down": True}}).decode()  # a JSON body, as /readyz
    )
    temp = "\n".join(
        f"    {kind}_temp_path {runtime / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    pages = "\n".join(f"        {line}" for line in error_pages)
    timeout = settings.timeout_seconds + 5  # a worker silent for timeout_seconds is restarted by gunicorn
    user = ""
    if os.geteuid() == 0:  # nginx would switch its worker to nobody, who cannot use the runtime folder
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    return f"""# written by nxp2-cds serve; see cds_service/server/supervisor.py
daemon off;
master_process on;
{user}worker_processes 1;
pid {runtime / "nginx.pid"};
error_log stderr warn;
worker_shutdown_timeout {settings.graceful_timeout_seconds}s;

events {{
    worker_connections {settings.max_connections};
}}

http {{
    access_log off;
    server_tokens off;
    default_type {OUTCOME_MIMETYPE};
{temp}
    client_header_timeout {settings.header_timeout_seconds}s;
    client_body_timeout {settings.body_timeout_seconds}s;
    send_timeout {settings.body_timeout_seconds}s;
    keepalive_timeout {settings.keepalive_seconds}s;
    keepalive_requests 1000;
    reset_timedout_connection on;
    client_header_buffer_size 2k;
    large_client_header_buffers 4 8k;
    client_max_body_size {max_body_bytes};
    client_body_buffer_size {BODY_IN_MEMORY};
    limit_conn_zone $server_port zone=active:1m;
    limit_conn_status 503;
    limit_conn_log_level warn;

    upstream workers {{
        server unix:{unix_socket} max_fails=0;
        server unix:{unix_socket} max_fails=0;
    }}

    server {{
        listen {listen} backlog=1024;
        limit_conn active {settings.max_active_requests};
        proxy_http_version 1.1;
        proxy_set_header Connection "close";
        proxy_set_header Host $http_host;
        proxy_set_header {FRONT_DOOR_HEADER} "{secret} $request_id";
        proxy_request_buffering on;
        proxy_buffering on;
        proxy_buffers 16 16k;
        proxy_connect_timeout 5s;
        proxy_send_timeout {timeout}s;
        proxy_read_timeout {timeout}s;
        proxy_next_upstream error non_idempotent;
        proxy_next_upstream_tries 2;
        proxy_next_upstream_timeout {timeout}s;

        location = /readyz {{
            if (-f "{draining}") {{
                return 503 {not_ready};
            }}
            proxy_pass http://workers;
        }}
        location / {{
            if (-f "{draining}") {{
                rewrite ^ {DRAIN_PREFIX}$uri last;
            }}
            proxy_pass http://workers;
        }}
        # while draining, answers say "Connection: close", so keep-alive clients leave before the listener closes
        location ^~ {DRAIN_PREFIX} {{
            internal;
            keepalive_timeout 0;
            proxy_pass http://workers$request_uri;
        }}
{pages}
    }}
}}
"""


# -- the supervisor: nginx and gunicorn as child processes -----------------------------------------------------------


_NGINX_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*)$")
_NGINX_LEVELS = {"emerg": "critical", "alert": "critical", "crit": "critical", "error": "error", "warn": "warning"}


def _relay_nginx_log(stream: Any) -> None:
    """nginx's error log, line by line, as the service's JSON log lines."""
    import structlog

    log = structlog.get_logger("nginx")
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        match = _NGINX_LINE.match(line)
        level, message = (match.group(1), match.group(2)) if match else ("error", line)
        getattr(log, _NGINX_LEVELS.get(level, "info"))(message)


def _die_with_parent() -> None:
    """In a child: SIGTERM when the supervisor dies (Linux), so nothing is left behind if it is killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Supervisor:
    """Runs gunicorn (forked) and nginx (executed) as children, stops them in order, and exits with them.

    The children get their own process group, so a terminal's Ctrl-C reaches the supervisor alone and the order of
    the shutdown holds. If either child dies, the other is stopped and the supervisor exits with 1.
    """

    nginx: str
    runtime: Path
    gunicorn: Mapping[str, Any]
    limits: Limits
    server: ServerSettings
    config: str
    secret: str
    """The front door's secret (in its configuration and the workers' environment, nowhere else)."""

    def __post_init__(self) -> None:
        import structlog

        self.log = structlog.get_logger("nxp2_cds.server")
        self.stopping: str | None = None
        self.gunicorn_pid = 0
        self.nginx_process: subprocess.Popen[bytes] | None = None

    # signal handlers only set flags; the loop below acts on them
    def _on_stop(self, signum: int, _frame: Any) -> None:
        self.stopping = self.stopping or signal.Signals(signum).name

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)  # gunicorn restarts its workers; nginx rereads its configuration

    def _pids(self) -> list[int]:
        pids = [self.gunicorn_pid] if self.gunicorn_pid else []
        if self.nginx_process is not None and self.nginx_process.poll() is None:
            pids.append(self.nginx_process.pid)
        return pids

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        (self.runtime / "nginx.conf").write_text(self.config)
        try:
            self.gunicorn_pid = self._fork_gunicorn()
            if not self._wait_for_socket():
                return self._stop(failed="gunicorn did not open its socket")
            self.nginx_process = self._start_nginx()
            while self.stopping is None:
                failed = self._child_died()
                if failed:
                    return self._stop(failed=failed)
                time.sleep(0.1)
            return self._stop()
        finally:
            shutil.rmtree(self.runtime, ignore_errors=True)

    def _fork_gunicorn(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:  # the child: gunicorn's arbiter, which installs its own signal handlers
            os.setpgid(0, 0)
            _die_with_parent()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            os.environ[FRONT_DOOR_SECRET_ENV] = self.secret  # the workers' settings: [server] front_door_secret
            run(self.gunicorn, self.limits)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)

    def _wait_for_socket(self, seconds: float = 60.0) -> bool:
        path = str(self.gunicorn["bind"]).removeprefix("unix:")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.stopping is None:
            if self._child_died():
                return False
            with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
                probe.connect(path)
                return True
            time.sleep(0.05)
        return self.stopping is not None

    def _start_nginx(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 - our own configuration, a fixed executable
            [self.nginx, "-e", "stderr", "-p", str(self.runtime), "-c", str(self.runtime / "nginx.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=_relay_nginx_log, args=(process.stderr,), daemon=True, name="nginx-log").start()
        return process

    def _child_died(self) -> str | None:
        if self.gunicorn_pid:
            pid, status = os.waitpid(self.gunicorn_pid, os.WNOHANG)
            if pid:
                self.gunicorn_pid = 0
                return f"gunicorn exited ({os.waitstatus_to_exitcode(status)})"
        if self.nginx_process is not None and self.nginx_process.poll() is not None:
            return f"nginx exited ({self.nginx_process.returncode})"
        return None

    def _stop(self, failed: str | None = None) -> int:
        """Readiness fails; after the delay nginx closes its listener and finishes the requests in flight; then the
        workers stop."""
        if failed:
            self.log.error("front door stopping: a process died", reason=failed)
        else:
            self.log.info("front door stopping", signal=self.stopping, delay_seconds=self.server.shutdown_delay_seconds)
        (self.runtime / "draining").touch()
        if not failed and self.server.shutdown_delay_seconds:
            time.sleep(self.server.shutdown_delay_seconds)
        grace = self.server.graceful_timeout_seconds + 5
        nginx = self.nginx_process
        if nginx is not None and nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)  # graceful: close the listener, finish what is in flight
            try:
                nginx.wait(grace)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        if self.gunicorn_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.gunicorn_pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if os.waitpid(self.gunicorn_pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)
            else:
                os.kill(self.gunicorn_pid, signal.SIGKILL)
                os.waitpid(self.gunicorn_pid, 0)
        self.log.info("front door stopped")
        return 1 if failed else 0


def serve(
    nginx: str | None,
    host: str,
    port: int,
    workers: int | None,
    threads: int | None,
    server: ServerSettings,
    *,
    max_body_bytes: int,
    log_level: str,
) -> int:
    """Serve on ``host``:``port`` until stopped; the exit code. With ``nginx`` (its executable): nginx in front of
    gunicorn, both supervised; without: gunicorn alone (development only)."""
    limit_malloc_arenas()
    limits = Limits(max_body_bytes, server.max_inflight_body_bytes, server.retry_after_seconds)
    if nginx is None:
        run(gunicorn_options(host, port, workers, threads, server, log_level), limits)
        return 0
    parent = str(server.runtime_dir) if server.runtime_dir else None
    if server.runtime_dir:
        server.runtime_dir.mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="nxp2-cds-serve-", dir=parent))
    unix_socket = runtime / "workers.sock"
    options = gunicorn_options(host, port, workers, threads, server, log_level, unix_socket=unix_socket)
    secret = secrets.token_hex(16)
    config = nginx_config(
        host, port, runtime, server, max_body_bytes=max_body_bytes, unix_socket=unix_socket, secret=secret
    )
    return Supervisor(nginx, runtime, options, limits, server, config, secret).run()


def free_port(host: str) -> int:
    """A port free on ``host`` now (for ``--port 0``: nginx cannot tell which port it got)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host.strip("[]"), 0))
        port: int = probe.getsockname()[1]
        return port
