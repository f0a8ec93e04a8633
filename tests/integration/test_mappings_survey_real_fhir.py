"""`nxp2-cds mappings survey` against the real FHIR engine (Medplum, in memory) loaded with the example patients
(`nxp2-cds demo load`) plus a few results under a laboratory's own codes, run through the command line as an
integration team would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.kit.examples import example_index
from tests.fhir_server.launcher import FhirTestServer

ROOT = Path(__file__).resolve().parents[2]
LAB = "http://hospital.example.org/fhir/CodeSystem/lab"
FERRITIN = f"{LAB}|FERR-L"
NXP2_CN = f"{LAB}|NXP2-CN"
MMT = f"{LAB}|MMT-PROX"
EXAMPLE_NXP2 = example_index()["anti_nxp2_local_code"]
Json = dict[str, Any]


def local_result(n: int, patient: str, code: str, name: str, value: Json) -> Json:
    """A final laboratory or examination result under the site's own code and name."""
    return {
        "resourceType": "Observation",
        "id": f"local-{code.lower()}-{n}",
        "status": "final",
        "code": {"coding": [{"system": LAB, "code": code, "display": name}], "text": name},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"2026-11-{10 + n:02d}T09:00:00Z",
        **value,
    }


LOCAL_RESULTS = [
    *(
        local_result(n, "ex-missing-labs", "FERR-L", "Ferritin (local)", {"valueQuantity": {"value": 350 + n}})
        for n in range(3)
    ),
    *(local_result(n, "ex-nxp2-unknown", "NXP2-CN", "抗NXP2抗体", {"valueString": "阳性(+)"}) for n in range(2)),
    local_result(0, "ex-missing-labs", "MMT-PROX", "MMT proximal grade", {"valueInteger": 3}),
]


@dataclass
class Site:
    fhir: str
    folder: Path
    server: FhirTestServer

    def survey(self, *args: str, local_codes: str = "", env: dict[str, str] | None = None) -> Any:
        """Run the survey with this site's configuration; the parsed --json document."""
        result = self.run("--json", *args, local_codes=local_codes, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def run(
        self, *args: str, local_codes: str = "", allowed: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = self.folder / "site.toml"
        servers = json.dumps([self.fhir] if allowed else ["https://fhir.elsewhere.example.org/r4"])
        config.write_text(
            f"[fhir]\nallowed_servers = {servers}\nallow_http = true\nrequest_timeout_seconds = 10.0\n"
            f"deadline_seconds = 30.0\n{local_codes}",
            encoding="utf-8",
        )
        environment = os.environ | {"NXP2_CDS_CONFIG": str(config)} | (env or {})
        return subprocess.run(
            [sys.executable, "-m", "cds_service.cli", "mappings", "survey", "--fhir-server", self.fhir, *args],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )


@pytest.fixture(scope="module")
def site(fhir_server: FhirTestServer, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The FHIR engine holding the example patients and six results under local codes."""
    fhir_server.reset()
    subprocess.run(
        [sys.executable, "-m", "cds_service.cli", "demo", "load", "--fhir-server", fhir_server.url],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"Observation/{r['id']}"}} for r in LOCAL_RESULTS
        ],
    }
    answer = requests.post(
        fhir_server.url, json=transaction, headers={"Content-Type": "application/fhir+json"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return Site(fhir_server.url, tmp_path_factory.mktemp("survey"), fhir_server)


@pytest.fixture(scope="module")
def whole_server(site: Site) -> Any:
    """The survey of the whole server, no local codes configured."""
    return site.survey()


def unmapped(document: Any) -> dict[str, tuple[str, str, int]]:
    """token → (concept, key, count) of the unmapped rows."""
    return {u["token"]: (u["concept"], u["key"], u["count"]) for u in document["unmapped"]}


def test_local_codes_are_listed_with_concept_and_count(whole_server: Any) -> None:
    """Local codes named "Ferritin (local)" x3, "抗NXP2抗体" x2, "MMT proximal grade" x1: listed, right concepts."""
    rows = unmapped(whole_server)
    assert rows[FERRITIN] == ("ferritin", "ferritin_gt_200", 3)
    assert rows[NXP2_CN] == ("anti-nxp2", "anti_nxp2_positive", 2)
    assert rows[MMT] == ("muscle-strength", "muscle_strength_le_3", 1)


def test_local_codes_are_in_the_snippet(whole_server: Any) -> None:
    """The snippet is valid TOML and adds the three local codes under their predictor ids."""
    codes = tomllib.loads(whole_server["snippet"])["mappings"]["local_codes"]
    assert FERRITIN in codes["ferritin_gt_200"]
    assert NXP2_CN in codes["anti_nxp2_positive"]
    assert codes["muscle_strength_le_3"] == [MMT]


def test_anti_nxp2_known_only_by_name_is_noted(whole_server: Any) -> None:
    """The examples' own anti-NXP2 code (named "NXP2 ...", not mapped) is listed with all 7 results, noted as
    recognised by its name and fetched by the discovery templates once mapped."""
    (row,) = [u for u in whole_server["unmapped"] if u["token"] == EXAMPLE_NXP2]
    assert (row["concept"], row["count"], row["recognisedByName"]) == ("anti-nxp2", 7, True)
    assert any("discovery templates" in note for note in row["notes"])


def test_loinc_ferritin_is_mapped_not_suggested(whole_server: Any) -> None:
    """LOINC-coded ferritin (2276-4, in the value set) is not suggested; it shows in the coverage."""
    assert not [u for u in whole_server["unmapped"] if u["system"] == "http://loinc.org"]
    (ferritin,) = [m for m in whole_server["mapped"] if m["concept"] == "ferritin"]
    assert "http://loinc.org|2276-4" in {c["token"] for c in ferritin["codes"]}


def test_concept_with_no_code_on_the_server_is_named(whole_server: Any) -> None:
    """Nothing on the examples looks like Ro52: the survey says so; the whole server was read."""
    assert "ro52" in {n["concept"] for n in whole_server["notFound"]}
    assert whole_server["complete"] is True


def test_applying_the_snippet_leaves_nothing_to_map(site: Site, whole_server: Any) -> None:
    """With the snippet as the site's configuration, a second survey finds no unmapped code and keeps the codes."""
    again = site.survey(local_codes=whole_server["snippet"])
    assert again["unmapped"] == []
    assert {m["concept"] for m in again["mapped"]} >= {"ferritin", "anti-nxp2", "muscle-strength"}
    assert tomllib.loads(again["snippet"]) == tomllib.loads(whole_server["snippet"])


def test_one_patient_survey_counts_that_patient_only(site: Site) -> None:
    """--patient ex-missing-labs: that child's local ferritin and muscle grade, not another child's NXP2 code."""
    rows = unmapped(site.survey("--patient", "ex-missing-labs"))
    assert rows[FERRITIN][2] == 3
    assert rows[MMT][2] == 1
    assert NXP2_CN not in rows


def test_readable_report_lists_the_codes_and_ends_with_the_snippet(site: Site) -> None:
    """Without --json: a table row per local code, then the [mappings.local_codes] section as valid TOML."""
    result = site.run()
    assert result.returncode == 0, result.stderr
    report, snippet = result.stdout.split("The [mappings.local_codes] section to use:", 1)
    rows = [line.split() for line in report.splitlines() if NXP2_CN in line]
    assert rows == [["anti-nxp2", "anti_nxp2_positive", "2", "Observation", NXP2_CN, "抗NXP2抗体"]]
    assert FERRITIN in tomllib.loads(snippet)["mappings"]["local_codes"]["ferritin_gt_200"]


def test_paging_bound_on_the_real_server_is_reported(site: Site) -> None:
    """With pages of 10 and [fhir] max_pages = 2, the Observation search reads 20 results and says it stopped."""
    document = site.survey("--page-size", "10", env={"NXP2_CDS_FHIR__MAX_PAGES": "2"})
    observations = document["searches"][0]
    assert (observations["pages"], observations["resources"], document["complete"]) == (2, 20, False)
    assert observations["total"] > 20
    assert "max_pages" in observations["stopped"]


def test_server_off_the_allowlist_is_refused_without_a_request(site: Site) -> None:
    """A server not on [fhir] allowed_servers: exit 2, the allowlist named, and not one request to the server."""
    before = site.server.stats()["requests"]
    result = site.run(allowed=False)
    assert result.returncode == 2
    assert "allowed_servers" in result.stderr
    assert site.server.stats()["requests"] == before
