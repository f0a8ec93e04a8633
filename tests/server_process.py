"""`nxp2-cds serve` as a real process for tests (nginx in front of gunicorn where nginx is installed, its own port),
stopped cleanly afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    url: str, process: subprocess.Popen[str], seconds: float = 60.0, log: Path | None = None
) -> requests.Response:
    """The first answer from ``url``; fails if the process exits or nothing answers in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else log.read_text() if log else ""
            raise AssertionError(f"server exited with {process.returncode}: {stderr}")
        try:
            return requests.get(url, timeout=2)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    raise AssertionError("server did not answer in time")


def clean_environment(**variables: str) -> dict[str, str]:
    """The test process's environment without any NXP2_CDS_* setting, plus ``variables``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NXP2_CDS_")} | variables


@dataclass
class Served:
    """A running `nxp2-cds serve`: its base URL, port and process (the supervisor, or gunicorn's arbiter alone)."""

    url: str
    port: int
    process: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, signum: signal.Signals = signal.SIGTERM, seconds: float = 60.0) -> int:
        """Signal the process (by its PID) and wait for it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(f"server did not stop within {seconds} s of {signum.name}") from None
        return self.process.returncode


@contextmanager
def running(
    cwd: Path, *args: str, workers: int = 1, settings: Mapping[str, str] | None = None, log: Path | None = None
) -> Iterator[Served]:
    """Run `nxp2-cds serve` in ``cwd`` with ``settings`` as its only NXP2_CDS_* variables, its stderr (one log line a
    request) to ``log`` or a new file in ``cwd``; yield it once /healthz answers. Whatever is left of it is stopped
    afterwards (SIGTERM, then SIGKILL)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "cds_service.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *args,
    ]
    if log is None:
        handle, name = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=cwd)
        os.close(handle)
        log = Path(name)
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=clean_environment(**(settings or {})),
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    served = Served(f"http://127.0.0.1:{port}", port, process, log)
    try:
        wait_for(f"{served.url}/healthz", process, log=log)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate(timeout=10)


@contextmanager
def serving(cwd: Path, *args: str, workers: int = 1, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run `nxp2-cds serve` in ``cwd`` with ``settings`` as its only NXP2_CDS_* variables; yield its base URL. It must
    stop cleanly (exit 0) on SIGTERM afterwards."""
    with running(cwd, *args, workers=workers, settings=settings) as served:
        yield served.url
        served.process.terminate()
        served.process.communicate(timeout=60)
        assert served.process.returncode == 0
