"""The integration kit's pieces: example patients, date shifting, prefetch from a Bundle, keys, command errors."""

from __future__ import annotations

import json
import stat
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from cds_service.core.engine import Engine
from cds_service.kit.client_tokens import ClientKey
from cds_service.kit.examples import (
    as_of_now,
    card_tiers,
    example_bundle,
    example_index,
    patient_of,
    prefetch_from_bundle,
    render_cards,
    resolve_references,
    schema_problems,
    shift_dates,
)
from fhir_mappings.dates import completed_years, parse_fhir_date
from tests.cli_runner import Cli

TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&code=http://loinc.org|2276-4",
    "conditions": "Condition?patient={{context.patientId}}",
}
EXAMPLES = example_index()["patients"]


def test_at_least_eight_realistic_examples() -> None:
    """Eight or more transaction Bundles, each with a Patient, several Conditions and tens of Observations."""
    assert len(EXAMPLES) >= 8
    for example in EXAMPLES:
        bundle = example_bundle(example["file"])
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert bundle["type"] == "transaction"
        assert (kinds.count("Patient"), kinds.count("Observation") >= 25) == (1, True)


def test_examples_are_valid_fhir_r4() -> None:
    """Every example Bundle validates as FHIR R4."""
    from fhir.resources.R4B.bundle import Bundle

    for example in EXAMPLES:
        Bundle.model_validate(example_bundle(example["file"]))


def test_shifting_moves_every_date_and_keeps_formats() -> None:
    """Dates, date-times and instants all move by the same number of days, in their own format."""
    document = {
        "birthDate": "2019-03-01",
        "effectiveDateTime": "2026-11-18T12:00:00Z",
        "onsetDateTime": "2026-01",
        "issued": "2026-11-18T15:00:00+02:00",
        "other": "2026-11-18",
    }
    assert shift_dates(document, 10) == {
        "birthDate": "2019-03-11",
        "effectiveDateTime": "2026-11-28T12:00:00Z",
        "onsetDateTime": "2026-01",
        "issued": "2026-11-28T15:00:00+02:00",
        "other": "2026-11-18",
    }


def test_as_of_now_keeps_ages_and_recency() -> None:
    """Moved to another day, an example keeps the patient's age and how recent its data is."""
    bundle = example_bundle("ex-fatal-course.json")
    later = as_of_now(bundle, date(2031, 6, 1))
    before, after = (parse_fhir_date(b["entry"][0]["resource"]["birthDate"]) for b in (bundle, later))
    assert before is not None
    assert after is not None
    assert completed_years(before, date(2026, 11, 24)) == completed_years(after, date(2031, 6, 1))


def test_references_resolve_to_type_and_id() -> None:
    """urn:uuid references become Type/id, as a server would store them."""
    resolved = resolve_references(example_bundle("ex-fatal-course.json"))
    subjects = {e["resource"]["subject"]["reference"] for e in resolved["entry"] if "subject" in e["resource"]}
    assert subjects == {"Patient/ex-fatal-course"}


def test_prefetch_from_a_bundle_follows_the_templates() -> None:
    """A read template gets the Patient, search templates searchsets of all resources of their type."""
    bundle = example_bundle("ex-nxp2-unknown.json")
    prefetch = prefetch_from_bundle(bundle, TEMPLATES, patient_of(bundle))
    assert prefetch["patient"]["id"] == "ex-nxp2-unknown"
    assert (prefetch["conditions"]["type"], prefetch["conditions"]["total"]) == ("searchset", 1)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["patient"] for e in EXAMPLES])
def test_examples_give_their_expected_cards(engine: Engine, example: dict[str, object]) -> None:
    """Each example, read as of today, gives exactly the cards its index entry promises."""
    from cds_service.core.cards import CardContext

    bundle = as_of_now(example_bundle(str(example["file"])), datetime.now(UTC).date())
    resources = [e["resource"] for e in resolve_references(bundle)["entry"]]
    assessment = engine.assess(resources, patient_id=str(example["patient"]), at=datetime.now(UTC))
    cards = engine.cards(assessment, CardContext(hook_instance="x", patient_id=str(example["patient"])))
    assert card_tiers({"cards": cards}) == example["expected_cards"]


def test_schema_problems_find_a_long_summary() -> None:
    """A response whose card summary is 140 characters or more is reported."""
    card = {"summary": "x" * 140, "indicator": "info", "source": {"label": "s"}}
    assert schema_problems("serviceResponse", {"cards": [card]}) == ["cards/0/summary: 140 characters or more"]


def test_no_cards_are_said_plainly() -> None:
    """An empty response is rendered as one explanatory line."""
    assert render_cards({"cards": []}).startswith("No cards")


def test_keys_generate_writes_a_usable_key(tmp_path: Path, cli: Cli) -> None:
    """`keys generate` writes an ES384 key (private file mode 600), its JWKS and the issuer; the key signs tokens."""
    result = cli("keys", "generate", str(tmp_path / "k"), "--iss", "https://ehr.test/client")
    assert result.exit_code == 0
    key, issuer = ClientKey.load(tmp_path / "k")
    assert (key.algorithm, issuer) == ("ES384", "https://ehr.test/client")
    assert stat.S_IMODE((tmp_path / "k" / "private-key.pem").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "k" / "jwks.json").read_text())["keys"][0]["kid"] == key.kid
    assert '[[auth.issuers]]\niss = "https://ehr.test/client"' in result.stdout


def test_keys_generate_never_overwrites(tmp_path: Path, cli: Cli) -> None:
    """A directory that already holds a key is refused (exit 2)."""
    cli("keys", "generate", str(tmp_path))
    assert cli("keys", "generate", str(tmp_path)).exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["http://127.0.0.1:9/cds-services/nxp2-jdm-risk"],
        ["http://127.0.0.1:9/cds-services/nxp2-jdm-risk", "--bundle", "x.json", "--fhir-server", "http://f"],
        ["http://127.0.0.1:9/nothing", "--bundle", "x.json"],
    ],
    ids=["no-data-source", "two-data-sources", "not-a-service-url"],
)
def test_call_usage_errors_exit_2(args: list[str], cli: Cli) -> None:
    """`call` with no data source, two, or a URL that is not a service gets exit 2 and one line."""
    result = cli("call", *args)
    assert (result.exit_code, len(result.stderr.strip().splitlines())) == (2, 1)


def test_call_to_a_service_that_is_down(tmp_path: Path, cli: Cli) -> None:
    """A service that does not answer is explained in one line (exit 1)."""
    bundle = Path(__file__).resolve().parents[2] / "examples" / "patients" / "ex-adult.json"
    result = cli("call", "http://127.0.0.1:9/cds-services/nxp2-jdm-risk", "--bundle", str(bundle))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "nxp2-cds: cannot reach http://127.0.0.1:9/cds-services: is the service running "
        "(`nxp2-cds serve`) and the URL right?"
    )
