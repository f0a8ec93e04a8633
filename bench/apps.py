"""The applications under test, built the way production builds them (auth off for benchmarking only)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from flask import Flask, request


def service_settings(**overrides: Any) -> Any:
    from cds_service.settings import load_settings

    folder = tempfile.mkdtemp(prefix="nxp2-bench-")
    overrides.setdefault("database_url", f"sqlite:///{folder}/bench.sqlite3")
    overrides.setdefault("auth", {"mode": "disabled"})
    return load_settings(**overrides)


def service_app(**overrides: Any) -> Flask:
    from cds_service import create_app

    return create_app(service_settings(**overrides), migrate=True)


def hello_app() -> Flask:
    """The baseline: a hello-world route in the same framework."""
    app = Flask("hello")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.post("/hello")
    def hello_post() -> str:
        request.get_data()  # read the body, as the hook must
        return "hello"

    return app


def gunicorn_app(kind: str) -> Flask:
    """Factory used by the benchmark's gunicorn server: ``hook`` or ``hello``."""
    if kind == "hello":
        return hello_app()
    return service_app(log_level=os.environ.get("BENCH_LOG_LEVEL", "INFO"))
