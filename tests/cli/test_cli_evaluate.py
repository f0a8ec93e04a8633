"""``nxp2-cds evaluate``: a patient-view request file in, a CDS Hooks response out."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.builders import assert_valid_cds, condition, hook_request, obs, patient, qty
from tests.cli_runner import Cli
from tests.synthetic_patients import nxp2_positive


def write_request(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_evaluate_prints_a_valid_response(tmp_path: Path, cli: Cli) -> None:
    """A request with prefetched data gives a schema-valid response with the expected cards."""
    request = hook_request(
        [patient(), nxp2_positive(), condition("M33.00"), condition("R60.0"), obs("2276-4", **qty(400, "ng/mL"))]
    )
    result = cli("evaluate", str(write_request(tmp_path, request)), "--at", "2026-11-24T12:00:00Z")
    response = json.loads(result.stdout)
    assert result.exit_code == 0
    assert_valid_cds("serviceResponse", response)
    assert [c["indicator"] for c in response["cards"]] == ["warning", "warning"]


def test_evaluate_reads_standard_input(cli: Cli) -> None:
    """'-' reads the request from standard input."""
    request = hook_request([patient(), condition("M33.00")])
    result = cli("evaluate", "-", "--at", "2026-11-24", input=json.dumps(request))
    assert (result.exit_code, len(json.loads(result.stdout)["cards"])) == (0, 1)


def test_evaluation_time_changes_the_answer(tmp_path: Path, cli: Cli) -> None:
    """--at sets the evaluation time: the same ferritin counts now and is stale a year later."""
    request = write_request(
        tmp_path,
        hook_request(
            [patient(), nxp2_positive(), condition("M33.00"), obs("2276-4", when="2026-11-01", **qty(400, "ng/mL"))]
        ),
    )
    now = json.loads(cli("evaluate", str(request), "--at", "2026-11-24").stdout)
    later = json.loads(cli("evaluate", str(request), "--at", "2027-11-24").stdout)
    assert [c["indicator"] for c in now["cards"]] == ["warning", "info"]
    assert [c["indicator"] for c in later["cards"]] == ["info", "info"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ({"hook": "patient-view"}, "not a CDS Hooks patient-view request: hookInstance"),
        (
            {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1"}},
            "context.patientId|patientId",
        ),
        (
            {"hook": "order-sign", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"}},
            "not supported",
        ),
    ],
    ids=["not-json", "no-hook-instance", "no-patient", "other-hook"],
)
def test_bad_requests_exit_2_with_one_line(tmp_path: Path, content: Any, message: str, cli: Cli) -> None:
    """A bad request file exits with status 2 and one explanatory line, no traceback."""
    result = cli("evaluate", str(write_request(tmp_path, content)))
    assert result.exit_code == 2
    assert re.search(message, result.stderr)
    assert "Traceback" not in result.output + result.stderr


def test_missing_file_is_reported(tmp_path: Path, cli: Cli) -> None:
    """A request file that does not exist is reported without a traceback."""
    result = cli("evaluate", str(tmp_path / "absent.json"))
    assert result.exit_code == 2
    assert "absent.json" in result.stderr


def test_bad_evaluation_time_is_reported(tmp_path: Path, cli: Cli) -> None:
    """An unreadable --at is reported with exit status 2."""
    result = cli("evaluate", str(write_request(tmp_path, hook_request([patient()]))), "--at", "yesterday")
    assert result.exit_code == 2
    assert "--at" in result.stderr


def test_readme_example_request_evaluates(cli: Cli) -> None:
    """The README's quick-start request gives a refractory warning and a GI critical card."""
    example = Path(__file__).resolve().parents[2] / "examples" / "request.json"
    result = cli("evaluate", str(example), "--at", "2026-11-24T12:00:00Z")
    assert [c["indicator"] for c in json.loads(result.stdout)["cards"]] == ["warning", "critical"]
