"""`nxp2-cds serve` as a real process for tests (gunicorn, its own port), stopped cleanly afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(url: str, process: subprocess.Popen[str], seconds: float = 60.0) -> requests.Response:
    """The first answer from ``url``; fails if the process exits or nothing answers in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"server exited with {process.returncode}: {stderr}")
        try:
            return requests.get(url, timeout=2)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    raise AssertionError("server did not answer in time")


def clean_environment(**variables: str) -> dict[str, str]:
    """The test process's environment without any NXP2_CDS_* setting, plus ``variables``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NXP2_CDS_")} | variables


@contextmanager
def serving(cwd: Path, *args: str, workers: int = 1, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run `nxp2-cds serve` in ``cwd`` with ``settings`` as its only NXP2_CDS_* variables; yield its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port), "--workers", str(workers), *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=clean_environment(**(settings or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=30)
        assert process.returncode == 0
