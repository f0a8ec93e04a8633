"""``pip install .`` is enough: the wheel carries the configuration and the value sets and runs on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.builders import condition, hook_request, patient
from tests.synthetic_patients import nxp2_positive

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("nxp2_cds-*.whl")
    return built


def test_wheel_contains_configuration_and_value_sets(wheel: Path) -> None:
    """The wheel has the knowledge base, the default settings, every value set and the naming systems."""
    names = set(zipfile.ZipFile(wheel).namelist())
    valuesets = sorted(p.name for p in (ROOT / "fhir_mappings" / "valuesets").glob("*.json"))
    assert {"cds_service/_config/knowledge.toml", "cds_service/_config/default.toml"} <= names
    assert {f"fhir_mappings/valuesets/{v}" for v in valuesets} <= names
    assert "fhir_mappings/naming-systems.json" in names
    assert {
        "cds_service/_examples/patients/index.json",
        "cds_service/schemas/cds-hooks-2.0.1.derived.schema.json",
    } <= names
    assert "cds_service/web/templates/evidence.html" in names


def test_installed_wheel_evaluates_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """Installed alone (dependencies from this environment), the command works from an unrelated folder."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    request = tmp_path / "request.json"
    request.write_text(json.dumps(hook_request([patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")])))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXP2_CDS_")}
    env["PYTHONPATH"] = str(target)
    code = "import sys; from cds_service.cli.main import main; sys.argv=['nxp2-cds', *sys.argv[1:]]; main()"
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(target)!r}); {code}",
            "evaluate",
            str(request),
            "--at",
            "2026-11-24",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    cards = json.loads(result.stdout)["cards"]
    assert [c["indicator"] for c in cards] == ["warning", "warning"]
    probe = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(target)!r}); import cds_service; print(cds_service.__file__)",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.startswith(str(target))
