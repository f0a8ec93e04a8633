"""The production server: gunicorn (threaded workers) running :func:`cds_service.create_app`.

Each worker builds its own application after the fork (no shared connection pools or threads across processes).
Workers default to the CPU count (at least 2) and threads to 4; both can be overridden. On SIGTERM requests in flight
get ``graceful_timeout`` to finish; a worker silent for ``timeout`` is restarted. Prometheus samples of all workers
are collected through a shared directory (see :mod:`metrics`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from . import logs
from .settings import ServerSettings

DEFAULT_THREADS = 4
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 - gunicorn's documented place for worker heartbeats in containers
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # also in metrics.py, which must not be imported before it is set


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


class _Application(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints, so its base is Any
    def __init__(self, options: Mapping[str, Any]) -> None:
        self._options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from . import create_app

        return create_app()


def _child_exit(_server: Any, worker: Any) -> None:
    from .metrics import worker_exited

    worker_exited(worker.pid)


def gunicorn_options(
    host: str,
    port: int,
    workers: int | None = None,
    threads: int | None = None,
    server: ServerSettings | None = None,
    log_level: str = "INFO",
) -> dict[str, Any]:
    settings = server or ServerSettings()
    options: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers or settings.workers or default_workers(),
        "threads": threads or settings.threads or DEFAULT_THREADS,
        "worker_class": "gthread",
        "timeout": settings.timeout_seconds,
        "graceful_timeout": settings.graceful_timeout_seconds,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": log_level.lower(),
        "logconfig_dict": logs.gunicorn_logconfig(log_level),
        "proc_name": "nxp2-cds",
        "limit_request_line": 8190,
        "limit_request_field_size": 16380,
        "control_socket_disable": True,  # no socket in $HOME: read-only root filesystems stay read-only
        "child_exit": _child_exit,
    }
    if SHARED_MEMORY.is_dir():  # heartbeat files in memory, not on a (possibly read-only) disk
        options["worker_tmp_dir"] = str(SHARED_MEMORY)
    return options


def prepare_metrics_directory() -> None:
    """Give the workers a shared, empty Prometheus directory (unless the operator chose one). Must run before
    anything imports prometheus_client in this process."""
    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="nxp2-cds-metrics-")
        return
    directory = Path(os.environ[MULTIPROC_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def run(options: Mapping[str, Any]) -> None:
    _Application(options).run()
