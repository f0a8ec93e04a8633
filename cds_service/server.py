"""The production server: gunicorn (threaded workers) running :func:`cds_service.create_app`.

Each worker builds its own application after the fork (no shared connection pools or threads across
processes). Workers and threads default to the CPU count and 4; both can be overridden.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gunicorn.app.base import BaseApplication

from . import logs

DEFAULT_THREADS = 4
DEFAULT_TIMEOUT = 30
DEFAULT_GRACEFUL_TIMEOUT = 20


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


def gunicorn_options(host: str, port: int, workers: int | None = None, threads: int | None = None) -> dict[str, Any]:
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers or default_workers(),
        "threads": threads or DEFAULT_THREADS,
        "worker_class": "gthread",
        "timeout": DEFAULT_TIMEOUT,
        "graceful_timeout": DEFAULT_GRACEFUL_TIMEOUT,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "logconfig_dict": logs.gunicorn_logconfig(),
        "proc_name": "nxp2-cds",
        "limit_request_line": 8190,
        "limit_request_field_size": 16380,
    }


def run(host: str, port: int, *, workers: int | None = None, threads: int | None = None) -> None:
    _Application(gunicorn_options(host, port, workers, threads)).run()
