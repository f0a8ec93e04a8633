"""The README's run command: `nxp2-cds serve` with no configuration answers discovery through gunicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from cds_service.cli import is_loopback, main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(url: str, process: subprocess.Popen[str], seconds: float = 60.0) -> requests.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("server did not answer in time")


def test_serve_with_no_configuration_answers_discovery(tmp_path: Path) -> None:
    """On a loopback address with no configuration, `nxp2-cds serve` starts gunicorn, creates its SQLite file in the
    working folder, answers discovery, and stops cleanly on SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXP2_CDS_")}
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        response = wait_for(f"http://127.0.0.1:{port}/cds-services", process)
        assert response.status_code == 200
        assert response.json()["services"][0]["id"] == "nxp2-jdm-risk"
        assert (tmp_path / "nxp2-cds.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_serve_refuses_an_open_address_without_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a non-loopback address with no issuers configured, serve refuses to start (exit 2, one line)."""
    for name in [k for k in os.environ if k.startswith("NXP2_CDS_")]:
        monkeypatch.delenv(name)
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "8099"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("cds.example.org", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    """Only loopback addresses count as loopback."""
    assert is_loopback(host) is loopback
