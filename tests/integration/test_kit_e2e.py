"""End to end, as an integration team would: a real FHIR R4 engine, `nxp2-cds demo load`, the service started with
authentication required and the kit's key trusted, then `nxp2-cds call` for every example patient through prefetch
(client-side, from the FHIR server), through the service's own fallback, and from the Bundle file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cds_service.kit.examples import card_tiers, example_index
from tests.fhir_server.launcher import FhirTestServer
from tests.server_process import serving

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = example_index()["patients"]
LOCAL_CODE = example_index()["anti_nxp2_local_code"]


def nxp2_cds(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds_service.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


@dataclass
class Kit:
    fhir: str
    service: str
    keys: Path
    loaded: str


@pytest.fixture(scope="module")
def kit(fhir_server: FhirTestServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """The FHIR server loaded with the examples, a client key, and the service trusting it (gunicorn, auth on)."""
    fhir_server.reset()
    loaded = nxp2_cds("demo", "load", "--fhir-server", fhir_server.url).stdout
    folder = tmp_path_factory.mktemp("kit")
    nxp2_cds("keys", "generate", str(folder / "keys"))
    client = json.loads((folder / "keys" / "client.json").read_text())
    config = folder / "site.toml"
    config.write_text(
        f'[auth]\nmode = "required"\n[[auth.issuers]]\niss = "{client["iss"]}"\n'
        f'jwks_file = "{folder / "keys" / "jwks.json"}"\n'
        f'[fhir]\nallowed_servers = ["{fhir_server.url}"]\nallow_http = true\n'
        f'[mappings.local_codes]\nanti_nxp2_positive = ["{LOCAL_CODE}"]\n'
    )
    with serving(folder, workers=2, settings={"NXP2_CDS_CONFIG": str(config)}) as base:
        yield Kit(fhir_server.url, f"{base}/cds-services/nxp2-jdm-risk", folder / "keys", loaded)


def call(kit: Kit, *args: str) -> subprocess.CompletedProcess[str]:
    return nxp2_cds("call", kit.service, "--keys", str(kit.keys), "--json", *args, check=False)


def tiers_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return card_tiers(json.loads(result.stdout))


def test_demo_load_prints_every_patient_id(kit: Kit) -> None:
    """`demo load` loads every example and prints its patient id."""
    assert [line.split("\t")[0] for line in kit.loaded.splitlines()] == [e["patient"] for e in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["patient"] for e in EXAMPLES])
def test_call_with_client_side_prefetch(kit: Kit, example: dict[str, Any]) -> None:
    """With prefetch built from the discovery templates against the FHIR server, the cards are the expected ones."""
    result = call(kit, "--fhir-server", kit.fhir, "--patient", example["patient"])
    assert tiers_of(result) == example["expected_cards"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["patient"] for e in EXAMPLES])
def test_call_through_the_service_fallback(kit: Kit, example: dict[str, Any]) -> None:
    """With no prefetch (only fhirServer), the service fetches the data itself and gives the same cards."""
    result = call(kit, "--fhir-server", kit.fhir, "--patient", example["patient"], "--no-prefetch")
    assert tiers_of(result) == example["expected_cards"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["patient"] for e in EXAMPLES])
def test_call_with_the_bundle_file(kit: Kit, example: dict[str, Any]) -> None:
    """With the example's Bundle file as prefetch, the cards are the expected ones."""
    result = call(kit, "--bundle", str(ROOT / "examples" / "patients" / example["file"]))
    assert tiers_of(result) == example["expected_cards"]


def test_call_without_a_key_is_explained_in_one_line(kit: Kit) -> None:
    """Calling the authenticated service without --keys fails with exit 1 and one explanatory line."""
    result = nxp2_cds("call", kit.service, "--fhir-server", kit.fhir, "--patient", "ex-fatal-course", check=False)
    assert (result.returncode, len(result.stderr.strip().splitlines())) == (1, 1)
    assert "401 - the service requires a client JWT: pass --keys DIR" in result.stderr


def test_terminal_output_shows_the_predictor_table(kit: Kit) -> None:
    """Without --json the cards are printed with indicator, summary, the predictor table and suggestions."""
    result = nxp2_cds(
        "call", kit.service, "--fhir-server", kit.fhir, "--patient", "ex-missing-labs", "--keys", str(kit.keys)
    )
    assert "[INFO] Refractory JDM risk unknown: none present" in result.stdout
    assert " *ferritin_gt_200        unknown" in result.stdout
    assert "suggestion: Order: serum ferritin" in result.stdout
