"""The README's run command: `nxp2-cds serve` with no configuration answers discovery through gunicorn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from cds_service.cli.main import is_loopback, main
from tests.server_process import serving


def test_serve_with_no_configuration_answers_discovery(tmp_path: Path) -> None:
    """On a loopback address with no configuration, `nxp2-cds serve` starts gunicorn, creates its SQLite file in the
    working folder, answers discovery, and stops cleanly (exit 0) on SIGTERM."""
    with serving(tmp_path, workers=2) as base:
        response = requests.get(f"{base}/cds-services", timeout=10)
        assert response.status_code == 200
        assert response.json()["services"][0]["id"] == "nxp2-jdm-risk"
        assert (tmp_path / "nxp2-cds.sqlite3").exists()


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


def test_only_prometheus_files_are_deleted_from_the_metrics_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare_metrics_directory empties an operator's PROMETHEUS_MULTIPROC_DIR of prometheus_client's own files
    (``counter_<pid>.db``, ``gauge_livesum_<pid>.db`` …) and deletes nothing else there, other ``*.db`` files
    included."""
    from cds_service.server.supervisor import prepare_metrics_directory

    ours = ["counter_12.db", "gauge_livesum_12.db", "histogram_7.db", "summary_3.db"]
    theirs = ["inventory.db", "counter_backup.db", "notes.txt"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    prepare_metrics_directory()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_serves_start_up_check_uses_the_configured_database_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nxp2-cds serve` checks that the app starts before it forks the workers, with the configured [database]
    settings: the spool it prepares is [database] spool_dir, not the default one beside the SQLite file."""
    served: list[tuple[object, ...]] = []
    monkeypatch.setattr("cds_service.cli.main._serve", lambda *args: served.append(args))
    monkeypatch.setenv("NXP2_CDS_DATABASE_URL", f"sqlite:///{tmp_path}/cds.sqlite3")
    monkeypatch.setenv("NXP2_CDS_DATABASE__SPOOL_DIR", str(tmp_path / "configured"))
    monkeypatch.setenv("NXP2_CDS_AUTH__MODE", "disabled")
    result = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1", "--port", "0"])
    assert (result.exit_code, len(served)) == (0, 1), result.output
    assert ((tmp_path / "configured").is_dir(), (tmp_path / "nxp2-cds-spool").exists()) == (True, False)
