"""Value sets: loading, validation, normalisation, local codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fhir_mappings import Terminology, TerminologyError, load_terminology
from fhir_mappings.terminology import default_valueset_dir
from tests.builders import ICD10CM, LOINC, SCT


def test_every_shipped_value_set_is_a_valid_r4_valueset(terminology: Terminology) -> None:
    """All shipped value sets load (each validated with fhir.resources) and are named after their file."""
    files = sorted(p.stem for p in default_valueset_dir().glob("*.json"))
    assert sorted(terminology.concepts) == files


def test_unverified_codes_are_marked(terminology: Terminology) -> None:
    """Codes the terminology research could not verify carry verification 'unverified' or 'corroborated'."""
    ro52 = {c.code: c.verification for c in terminology.concepts["ro52"].codes}
    assert set(ro52.values()) == {"unverified"}
    ana = {c.code: c.verification for c in terminology.concepts["ana"].codes}
    assert ana["42254-3"] == "corroborated"


@pytest.mark.parametrize(
    ("trap", "system"),
    [("410795001", SCT), ("249942005", SCT), ("55929007", SCT), ("24079001", SCT), ("8124-0", LOINC)],
)
def test_known_wrong_codes_match_nothing(terminology: Terminology, trap: str, system: str) -> None:
    """Codes the research flagged as traps (JIA, distal weakness, irritability, atopic dermatitis, CD3 %) match
    no concept."""
    assert terminology.concepts_for(system, trap) == frozenset()


@pytest.mark.parametrize("code", ["M33.02", "M3302", "m33.02", " M33.02 "])
def test_icd10cm_matches_with_or_without_the_dot(terminology: Terminology, code: str) -> None:
    """ICD-10-CM codes match upper- or lower-case, with or without the dot."""
    assert terminology.concepts_for(ICD10CM, code) == frozenset({"jdm-diagnosis"})


@pytest.mark.parametrize(
    "system",
    ["http://loinc.org", "urn:oid:2.16.840.1.113883.6.1", "2.16.840.1.113883.6.1"],
)
def test_code_system_aliases(terminology: Terminology, system: str) -> None:
    """A code system is recognised by its URI, its urn:oid form or its bare OID."""
    assert terminology.concepts_for(system, "2276-4") == frozenset({"ferritin"})


def test_one_code_can_belong_to_two_concepts(terminology: Terminology) -> None:
    """JDM with respiratory involvement counts as JDM and as interstitial lung disease."""
    assert terminology.concepts_for(ICD10CM, "M33.01") == frozenset({"jdm-diagnosis", "ild"})


def test_local_codes_extend_a_value_set() -> None:
    """A site's local code joins the value set it is configured for and is marked as local."""
    terminology = load_terminology(local_codes={"anti-nxp2": ["urn:oid:1.2.3|NX2"]})
    assert terminology.concepts_for("urn:oid:1.2.3", "NX2") == frozenset({"anti-nxp2"})
    assert [c.local for c in terminology.concepts["anti-nxp2"].codes] == [True]


@pytest.mark.parametrize("token", ["NX2", "|NX2", "urn:x|", "  |  "])
def test_malformed_local_code_is_refused(token: str) -> None:
    """A local code must be written 'system|code'."""
    with pytest.raises(TerminologyError, match="system\\|code"):
        load_terminology(local_codes={"anti-nxp2": [token]})


def test_local_code_for_unknown_value_set_is_refused() -> None:
    """Local codes for a value set that does not exist stop loading."""
    with pytest.raises(TerminologyError, match="unknown value set 'nope'"):
        load_terminology(local_codes={"nope": ["urn:x|1"]})


def test_text_pattern_matches_antibody_names(terminology: Terminology) -> None:
    """The anti-NXP2 text pattern recognises the antibody's names and not look-alikes."""
    names = ["NXP2 Ab", "NXP-2 antibody", "anti-MJ", "Anti p140", "Nuclear matrix protein 2 IgG"]
    others = ["MDA5 Ab", "TIF1-gamma", "Majority", "mj"]
    assert [terminology.text_matches("anti-nxp2", n) for n in names] == [True] * len(names)
    assert [terminology.text_matches("anti-nxp2", n) for n in others] == [False] * len(others)


def _copy_valuesets(tmp_path: Path) -> Path:
    target = tmp_path / "valuesets"
    shutil.copytree(default_valueset_dir(), target)
    return target


def test_invalid_valueset_file_names_the_file(tmp_path: Path) -> None:
    """A value set that is not valid R4 stops loading with the file named."""
    directory = _copy_valuesets(tmp_path)
    path = directory / "ferritin.json"
    document = json.loads(path.read_text())
    document["compose"]["include"] = "every code"
    path.write_text(json.dumps(document))
    with pytest.raises(TerminologyError, match=r"ferritin\.json: not a valid FHIR R4 ValueSet"):
        load_terminology(directory)


def test_valueset_id_must_match_file_name(tmp_path: Path) -> None:
    """A value set whose id differs from its file name is refused."""
    directory = _copy_valuesets(tmp_path)
    (directory / "ferritin.json").rename(directory / "ferritin-copy.json")
    with pytest.raises(TerminologyError, match="must equal the file name"):
        load_terminology(directory)


def test_isa_filter_matches_icd_prefixes(tmp_path: Path) -> None:
    """A site value set may use an is-a filter on ICD-10-CM: every code under the prefix matches."""
    directory = _copy_valuesets(tmp_path)
    path = directory / "skin-ulcer.json"
    document = json.loads(path.read_text())
    document["compose"]["include"].append(
        {"system": ICD10CM, "filter": [{"property": "concept", "op": "is-a", "value": "L97"}]}
    )
    path.write_text(json.dumps(document))
    terminology = load_terminology(directory)
    assert terminology.concepts_for(ICD10CM, "L97.319") == frozenset({"skin-ulcer"})


def test_bad_text_pattern_names_the_file(tmp_path: Path) -> None:
    """An invalid regular expression in a text-pattern extension stops loading with the file named."""
    directory = _copy_valuesets(tmp_path)
    path = directory / "anti-nxp2.json"
    document = json.loads(path.read_text())
    document["extension"][0]["valueString"] = "(unclosed"
    path.write_text(json.dumps(document))
    with pytest.raises(TerminologyError, match=r"anti-nxp2\.json: extension text-pattern"):
        load_terminology(directory)
