"""`nxp2-cds mappings survey`: which of a FHIR server's codes look like a predictor but are not mapped.

The counting and matching (:mod:`cds_service.kit.survey`) are tested on resources directly; the command, with the
service's outbound rules, against pytest-httpserver."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pytest_httpserver import HTTPServer

from cds_service.core.engine import Engine
from cds_service.fhir.client import Deadline, FhirClient, FhirNotAllowed, new_session
from cds_service.kit.survey import SearchReport, Suggestion, Survey, SurveyResult
from cds_service.settings import FhirSettings
from fhir_mappings import load_terminology
from tests.builders import ICD10CM, LOINC, coded, condition, obs, searchset
from tests.cli_runner import Cli

Json = dict[str, Any]
LAB = "http://hospital.example.org/fhir/CodeSystem/lab"
DX = "http://hospital.example.org/fhir/CodeSystem/diagnosis"
SERVER = "https://fhir.hospital.example.org/r4"
BASE_PATH = "/fhir"
TOKEN = "site-access-token"


def local_obs(code: str, name: str, *, system: str = LAB, **fields: Any) -> Json:
    """An Observation with a laboratory's own code and display."""
    return obs(code, system=system, display=name, **fields)


def local_condition(code: str, name: str, *, system: str = DX) -> Json:
    """A Condition with a coding of the site's own (or any system) and its display."""
    resource = condition(code, system=system)
    resource["code"] = coded(system, code, name)
    return resource


def surveyed(engine: Engine, *resources: Json, configured: dict[str, list[str]] | None = None) -> SurveyResult:
    survey = Survey(engine.knowledge, engine.terminology, configured)
    survey.add_all(resources)
    return survey.result(SERVER, [SearchReport("Observation?_count=1000", 1, len(resources))])


def only(result: SurveyResult) -> Suggestion:
    (suggestion,) = result.suggestions
    return suggestion


def snippet_codes(result: SurveyResult) -> dict[str, list[str]]:
    codes: dict[str, list[str]] = tomllib.loads(result.snippet())["mappings"]["local_codes"]
    return codes


# -- counting and matching --------------------------------------------------------------------------------


def test_unmapped_local_ferritin_is_suggested_with_its_count(engine: Engine) -> None:
    """Three Observations with an unmapped code named "Ferritin (local)" give one ferritin row counted 3."""
    result = surveyed(engine, *(local_obs("FERR-L", "Ferritin (local)") for _ in range(3)))
    suggestion = only(result)
    assert (suggestion.target.concept, suggestion.target.key, suggestion.count) == ("ferritin", "ferritin_gt_200", 3)
    assert (suggestion.token, suggestion.resource_type) == (f"{LAB}|FERR-L", "Observation")
    assert snippet_codes(result) == {"ferritin_gt_200": [f"{LAB}|FERR-L"]}


def test_already_mapped_code_is_counted_as_coverage_not_suggested(engine: Engine) -> None:
    """LOINC-coded ferritin (in the value set) is not suggested; it is counted under the mapped codes."""
    result = surveyed(engine, obs("2276-4", display="Ferritin [Mass/volume] in Serum or Plasma"))
    assert result.suggestions == ()
    (coverage,) = result.coverage
    assert (coverage.target.concept, coverage.count, coverage.codes) == ("ferritin", 1, ((f"{LOINC}|2276-4", 1),))


def test_site_configured_local_code_counts_as_mapped(engine: Engine) -> None:
    """A code already in the site's [mappings.local_codes] is mapped: not suggested again, and kept in the
    snippet."""
    configured = {"ferritin_gt_200": [f"{LAB}|FERR-L"]}
    terminology = load_terminology(local_codes=engine.knowledge.local_code_targets(configured))
    survey = Survey(engine.knowledge, terminology, configured)
    survey.add(local_obs("FERR-L", "Ferritin (local)"))
    result = survey.result(SERVER, [])
    assert result.suggestions == ()
    assert [c.target.concept for c in result.coverage] == ["ferritin"]
    assert snippet_codes(result) == configured


def test_unrelated_codes_are_ignored(engine: Engine) -> None:
    """A heart rate or a creatinine is neither suggested nor counted as coverage."""
    result = surveyed(engine, obs("8867-4", display="Heart rate"), local_obs("CREA", "Creatinine"))
    assert (result.suggestions, result.coverage) == ((), ())


def test_chinese_nxp2_name_is_recognised_by_name_and_suggested(engine: Engine) -> None:
    """An anti-NXP2 result named only in Chinese ("抗NXP2抗体") is listed as recognised by its name, with the note
    that mapping its code lets the discovery templates fetch it; it is in the snippet."""
    suggestion = only(surveyed(engine, local_obs("NXP2-CN", "抗NXP2抗体")))
    assert (suggestion.target.key, suggestion.recognised_by_name, suggestion.in_snippet) == (
        "anti_nxp2_positive",
        True,
        True,
    )
    assert any("discovery templates" in note for note in suggestion.notes())


def test_muscle_grade_is_matched_by_its_survey_pattern(engine: Engine) -> None:
    """A code named "MMT proximal grade" looks like muscle strength (by its survey pattern; not read by name)."""
    suggestion = only(surveyed(engine, local_obs("MMT-P", "MMT proximal grade")))
    assert (suggestion.target.key, suggestion.recognised_by_name) == ("muscle_strength_le_3", False)


def test_longest_match_decides_between_concepts(engine: Engine) -> None:
    """A code named "CD4/CD8 ratio" also looks like CD4 and CD8, but the ratio's pattern covers more: the ratio."""
    suggestion = only(surveyed(engine, local_obs("T4T8", "CD4/CD8 ratio")))
    assert (suggestion.target.key, suggestion.in_snippet) == ("cd4_cd8_lt_1_4", True)
    assert set(suggestion.also_matches) == {"cd4-absolute", "cd8-absolute"}


def test_value_set_that_is_not_a_predictors_first_is_keyed_by_its_id(engine: Engine) -> None:
    """CD4 counts and body weight are keyed by their value set ids (cd4-absolute, body-weight), not a predictor."""
    result = surveyed(engine, local_obs("CD4A", "CD4 absolute count"), local_obs("WT", "Weight (clinic scale)"))
    assert snippet_codes(result) == {"body-weight": [f"{LAB}|WT"], "cd4-absolute": [f"{LAB}|CD4A"]}


def test_a_tie_between_concepts_is_left_for_a_person(engine: Engine) -> None:
    """A code named "Weight-for-length" fits body weight and height equally: listed, commented out in the snippet."""
    result = surveyed(engine, local_obs("WFL", "Weight-for-length"))
    suggestion = only(result)
    assert not suggestion.in_snippet
    assert "equally" in (suggestion.review or "")
    assert snippet_codes(result) == {}
    assert f'# {suggestion.target.key} = ["{LAB}|WFL"]' in result.snippet()


def test_panel_code_is_not_offered_as_the_antibody(engine: Engine) -> None:
    """A myositis panel named after NXP2 is not offered as anti-NXP2 (a panel's own result never counts), but its
    NXP2 component's local code is."""
    panel = local_obs(
        "MYO16",
        "Myositis antibody panel (NXP2, MDA5, TIF1-γ)",
        component=[{"code": coded(LAB, "MYO16-NXP2", "NXP2")}],
    )
    result = surveyed(engine, panel)
    rows = {s.code: s for s in result.suggestions}
    assert "panel" in (rows["MYO16"].review or "")
    assert rows["MYO16-NXP2"].resource_type == "Observation.component"
    assert snippet_codes(result) == {"anti_nxp2_positive": [f"{LAB}|MYO16-NXP2"]}


def test_condition_codes_are_matched_to_the_finding_predictors_only(engine: Engine) -> None:
    """A Condition named like a predictor read from Conditions (JDM) is suggested; one named like a laboratory
    value (hyperferritinaemia) is not, and an Observation named like JDM is not either."""
    result = surveyed(
        engine,
        local_condition("DX-JDM", "幼年皮肌炎 (juvenile dermatomyositis)"),
        local_condition("DX-FERR", "Hyperferritinaemia"),
        local_obs("MYO", "Myositis antibody screen"),
    )
    assert [(s.code, s.target.key) for s in result.suggestions] == [("DX-JDM", "jdm_diagnosis")]


def test_unmapped_icd10_condition_that_looks_like_a_predictor_is_listed(engine: Engine) -> None:
    """An ICD-10-CM code outside the value set whose name looks like a predictor (a lower-leg ulcer) is listed."""
    ulcer = local_condition(
        "L97.909", "Non-pressure chronic ulcer of unspecified part of unspecified lower leg", system=ICD10CM
    )
    suggestion = only(surveyed(engine, ulcer))
    assert (suggestion.target.key, suggestion.resource_type, suggestion.token) == (
        "skin_ulcer",
        "Condition",
        f"{ICD10CM}|L97.909",
    )


def test_name_without_a_code_is_listed_but_not_in_the_snippet(engine: Engine) -> None:
    """An Observation with only code.text "Ferritin" is listed (it cannot be mapped) and is not in the snippet."""
    text_only = obs("x")
    text_only["code"] = {"text": "Ferritin"}
    result = surveyed(engine, text_only)
    suggestion = only(result)
    assert (suggestion.token, suggestion.in_snippet) == (None, False)
    assert any("cannot be mapped" in note for note in suggestion.notes())
    assert snippet_codes(result) == {}


def test_a_resource_seen_twice_is_counted_once(engine: Engine) -> None:
    """The same Observation (same id) on two pages counts once."""
    ferritin = local_obs("FERR-L", "Ferritin (local)", rid="obs-ferr")
    assert only(surveyed(engine, ferritin, dict(ferritin))).count == 1


def test_concepts_with_nothing_on_the_server_are_named(engine: Engine) -> None:
    """With no muscle grade at all, muscle-strength is reported as "no code found"; with one, it is not."""
    empty = surveyed(engine)
    assert "muscle-strength" in {t.concept for t in empty.not_found}
    assert "muscle-strength (muscle_strength_le_3): no code found on this server" in empty.render()
    graded = surveyed(engine, local_obs("MMT-P", "MMT proximal grade"))
    assert "muscle-strength" not in {t.concept for t in graded.not_found}


def test_snippet_is_valid_toml_whatever_the_names(engine: Engine) -> None:
    """Quotes, backslashes, line breaks and CJK in codes and names still give valid TOML with the exact codes."""
    tricky = local_obs('FE"R\\R', 'Ferritin "new"\nline \\ 铁蛋白\x7f')
    result = surveyed(engine, tricky)
    assert snippet_codes(result) == {"ferritin_gt_200": [f'{LAB}|FE"R\\R']}


def test_applying_the_snippet_maps_the_codes(engine: Engine) -> None:
    """The snippet's [mappings.local_codes] loads into the value sets, and then the same resources are mapped."""
    resources = [
        local_obs("FERR-L", "Ferritin (local)"),
        local_obs("NXP2-CN", "抗NXP2抗体"),
        local_obs("CD4A", "CD4 absolute count"),
    ]
    codes = snippet_codes(surveyed(engine, *resources))
    terminology = load_terminology(local_codes=engine.knowledge.local_code_targets(codes))
    again = Survey(engine.knowledge, terminology, codes)
    again.add_all(resources)
    result = again.result(SERVER, [])
    assert result.suggestions == ()
    assert {c.target.concept for c in result.coverage} == {"ferritin", "anti-nxp2", "cd4-absolute"}


# -- the command against an HTTP server -------------------------------------------------------------------


@pytest.fixture
def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Write a site configuration ([fhir] and optional [mappings.local_codes]) and point NXP2_CDS_CONFIG at it."""

    def write(allowed: list[str], *, allow_http: bool = True, max_pages: int = 10, local: str = "") -> None:
        path = tmp_path / "site.toml"
        path.write_text(
            f"[fhir]\nallowed_servers = {json.dumps(allowed)}\nallow_http = {str(allow_http).lower()}\n"
            f"max_pages = {max_pages}\nrequest_timeout_seconds = 2.0\ndeadline_seconds = 5.0\n{local}",
            encoding="utf-8",
        )
        monkeypatch.setenv("NXP2_CDS_CONFIG", str(path))

    return write


def serve_searches(httpserver: HTTPServer, observations: Json, conditions: Json | None = None) -> None:
    httpserver.expect_request(f"{BASE_PATH}/Observation").respond_with_json(observations)
    httpserver.expect_request(f"{BASE_PATH}/Condition").respond_with_json(conditions or searchset())


def page(resources: list[Json], next_url: str | None) -> Json:
    bundle = searchset(*resources)
    if next_url is not None:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def test_server_off_the_allowlist_is_refused_without_a_request(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """A server not on [fhir] allowed_servers: exit 2, a message naming the allowlist, and no request at all."""
    configure(["https://fhir.hospital.example.org/r4"])
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH))
    assert result.exit_code == 2
    assert "refusing to survey" in result.stderr
    assert "allowed_servers" in result.stderr
    assert httpserver.log == []


def test_plain_http_is_refused_unless_allowed(configure: Callable[..., None], httpserver: HTTPServer, cli: Cli) -> None:
    """An allowlisted server over plain http is refused (no request) while [fhir] allow_http is false."""
    configure([httpserver.url_for(BASE_PATH)], allow_http=False)
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH))
    assert result.exit_code == 2
    assert "https" in result.stderr
    assert httpserver.log == []


def test_survey_reports_codes_and_prints_the_snippet(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """The report lists the unmapped local code with its count and ends with a valid [mappings.local_codes]."""
    configure([httpserver.url_for(BASE_PATH)])
    serve_searches(httpserver, searchset(*(local_obs("FERR-L", "Ferritin (local)") for _ in range(2))))
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH))
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if f"{LAB}|FERR-L" in line and "Ferritin" in line)
    assert row.split()[:4] == ["ferritin", "ferritin_gt_200", "2", "Observation"]
    snippet = result.stdout.split("The [mappings.local_codes] section to use:", 1)[1]
    assert tomllib.loads(snippet)["mappings"]["local_codes"] == {"ferritin_gt_200": [f"{LAB}|FERR-L"]}


def test_whole_server_searches_ask_for_codes_only(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """Without --patient: one Observation and one Condition type search, with _elements and _count."""
    configure([httpserver.url_for(BASE_PATH)])
    serve_searches(httpserver, searchset())
    assert (
        cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--page-size", "500").exit_code == 0
    )
    sent = [(r.path, parse_qs(r.query_string.decode())) for r, _ in httpserver.log]
    assert sent == [
        (f"{BASE_PATH}/Observation", {"_elements": ["code,component"], "_count": ["500"]}),
        (f"{BASE_PATH}/Condition", {"_elements": ["code"], "_count": ["500"]}),
    ]


def test_patients_are_surveyed_one_by_one(configure: Callable[..., None], httpserver: HTTPServer, cli: Cli) -> None:
    """With --patient a --patient b: each patient's Observations and Conditions, nothing else."""
    configure([httpserver.url_for(BASE_PATH)])
    serve_searches(httpserver, searchset())
    assert (
        cli(
            "mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--patient", "a", "--patient", "b"
        ).exit_code
        == 0
    )
    sent = [(r.path.rsplit("/", 1)[1], r.args.get("patient")) for r, _ in httpserver.log]
    assert sent == [("Observation", "a"), ("Condition", "a"), ("Observation", "b"), ("Condition", "b")]


def test_patient_id_that_is_not_a_fhir_id_is_refused(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """--patient 'a&code=x' is refused before any request (it could change the search)."""
    configure([httpserver.url_for(BASE_PATH)])
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--patient", "a&code=x")
    assert result.exit_code == 2
    assert "not a FHIR id" in result.stderr
    assert httpserver.log == []


def test_token_is_sent_as_bearer_to_the_server(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """--token goes to the FHIR server as a bearer token on every request."""
    configure([httpserver.url_for(BASE_PATH)])
    serve_searches(httpserver, searchset())
    assert cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--token", TOKEN).exit_code == 0
    assert {r.headers.get("Authorization") for r, _ in httpserver.log} == {f"Bearer {TOKEN}"}


def test_paging_stops_at_max_pages_and_says_so(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """With [fhir] max_pages = 2 and more pages on the server: two pages read, the third never asked for, and
    the JSON document says the search is incomplete and why."""
    configure([httpserver.url_for(BASE_PATH)], max_pages=2)
    ferritin = local_obs("FERR-L", "Ferritin (local)")
    first = page([ferritin], httpserver.url_for(f"{BASE_PATH}/page2"))
    httpserver.expect_request(f"{BASE_PATH}/Observation").respond_with_json(first)
    httpserver.expect_request(f"{BASE_PATH}/page2").respond_with_json(
        page([local_obs("FERR-L", "Ferritin (local)")], httpserver.url_for(f"{BASE_PATH}/page3"))
    )
    httpserver.expect_request(f"{BASE_PATH}/Condition").respond_with_json(searchset())
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    observations = document["searches"][0]
    assert (observations["pages"], observations["complete"], document["complete"]) == (2, False, False)
    assert "max_pages" in observations["stopped"]
    assert f"{BASE_PATH}/page3" not in [r.path for r, _ in httpserver.log]
    assert document["unmapped"][0]["count"] == 2


def test_bound_hit_is_a_warning_in_the_report(configure: Callable[..., None], httpserver: HTTPServer, cli: Cli) -> None:
    """The readable report warns that the survey is incomplete when a search hit the page bound."""
    configure([httpserver.url_for(BASE_PATH)], max_pages=1)
    serve_searches(httpserver, page([], httpserver.url_for(f"{BASE_PATH}/page2")))
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH))
    assert "WARNING: incomplete" in result.stdout
    assert "(INCOMPLETE)" in result.stdout


def test_next_link_to_another_origin_is_not_followed(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """A next link to another origin stops the search there (reported), and is never requested."""
    configure([httpserver.url_for(BASE_PATH)])
    elsewhere = httpserver.url_for(f"{BASE_PATH}/page2").replace("localhost", "127.0.0.1")
    serve_searches(httpserver, page([], elsewhere))
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--json")
    assert "another origin" in json.loads(result.stdout)["searches"][0]["stopped"]
    assert len(httpserver.log) == 2


def test_first_page_error_fails_with_the_status(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """A 401 on the first search: exit 2 and a message with the status and a hint about --token."""
    configure([httpserver.url_for(BASE_PATH)])
    httpserver.expect_request(f"{BASE_PATH}/Observation").respond_with_json({"resourceType": "OperationOutcome"}, 401)
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH))
    assert result.exit_code == 2
    assert "401" in result.stderr
    assert "--token" in result.stderr


def test_json_document_lists_unmapped_mapped_and_missing(
    configure: Callable[..., None], httpserver: HTTPServer, cli: Cli
) -> None:
    """--json gives the unmapped codes, the mapped coverage, the concepts with nothing, and the snippet."""
    configure([httpserver.url_for(BASE_PATH)])
    serve_searches(httpserver, searchset(local_obs("NXP2-CN", "抗NXP2抗体"), obs("2276-4", display="Ferritin")))
    result = cli("mappings", "survey", "--fhir-server", httpserver.url_for(BASE_PATH), "--json")
    document = json.loads(result.stdout)
    assert [(u["key"], u["token"], u["count"], u["recognisedByName"]) for u in document["unmapped"]] == [
        ("anti_nxp2_positive", f"{LAB}|NXP2-CN", 1, True)
    ]
    assert [(m["concept"], m["count"]) for m in document["mapped"]] == [("ferritin", 1)]
    assert "muscle-strength" in {n["concept"] for n in document["notFound"]}
    assert tomllib.loads(document["snippet"])["mappings"]["local_codes"] == {"anti_nxp2_positive": [f"{LAB}|NXP2-CN"]}


# -- the client helper the survey pages with --------------------------------------------------------------


def test_next_page_refuses_another_origin_without_a_request(httpserver: HTTPServer) -> None:
    """FhirClient.next_page raises FhirNotAllowed for a next link on another origin, and sends nothing."""
    base = httpserver.url_for(BASE_PATH)
    shipped = FhirSettings()  # the request timeout and the page and size caps of config/default.toml
    client = FhirClient(
        new_session(),
        base,
        token=TOKEN,
        deadline=Deadline(5.0),
        request_timeout=shipped.request_timeout_seconds,
        max_pages=shipped.max_pages,
        max_bytes=shipped.max_response_bytes,
    )
    elsewhere = urlsplit(base)._replace(netloc=f"127.0.0.1:{httpserver.port}").geturl() + "/page2"
    with pytest.raises(FhirNotAllowed):
        client.next_page(page([], elsewhere))
    assert httpserver.log == []
