"""Every hook response, read by an independent CDS Hooks implementation as well as by the JSON Schema.

HealthChain's pydantic models (``healthchain.models.responses.cdsresponse``) are the other reading: a CDS Hooks SDK
written by others, stricter than the schema where it says a field must be present (``isRecommended`` on
suggestions, ``autoLaunchable`` on links). Each example patient's cards, the screening card and both notices go
through the app exactly as an EHR would send them, and must pass both.

HealthChain is an optional test dependency: without it these tests are skipped, unless
``NXP2_CDS_REQUIRE_HEALTHCHAIN=1``, then they fail. Its package caps ``fhir.resources`` below the version this project
runs on, so install it without its dependencies; its CDS Hooks models need only pydantic, PyYAML and colorama::

    pip install --no-deps healthchain==0.16.1 colorama
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service.kit.examples import (
    as_of_now,
    card_tiers,
    example_bundle,
    example_index,
    patient_of,
    prefetch_from_bundle,
)
from tests.builders import (
    AT,
    Json,
    assert_valid_cds,
    assert_valid_healthchain,
    birth_date_for_age,
    condition,
    healthchain_missing,
    hook_request,
    patient,
)
from tests.http_support import SERVICE_URL
from tests.synthetic_patients import nxp2_positive

REQUIRE_ENV = "NXP2_CDS_REQUIRE_HEALTHCHAIN"
EXAMPLES: list[dict[str, Any]] = example_index()["patients"]


@pytest.fixture
def healthchain() -> None:
    """Skip (or, with NXP2_CDS_REQUIRE_HEALTHCHAIN=1, fail) when HealthChain's models cannot be imported."""
    reason = healthchain_missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason)


def _respond(client: FlaskClient, request: Json) -> Json:
    response = client.post(SERVICE_URL, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: Json = response.get_json()
    return body


def _both_agree(body: Json) -> None:
    """The response passes the JSON Schema and HealthChain; a failure names each check that refused it."""
    refused = []
    try:
        assert_valid_cds("serviceResponse", body)
    except AssertionError as exc:
        refused.append(f"JSON Schema: {exc}")
    try:
        assert_valid_healthchain(body)
    except AssertionError as exc:
        refused.append(f"HealthChain: {exc}")
    assert not refused, "\n".join(refused)


@pytest.mark.usefixtures("healthchain")
@pytest.mark.parametrize("example", EXAMPLES, ids=[e["patient"] for e in EXAMPLES])
def test_example_patient_cards_pass_healthchain(client: FlaskClient, example: dict[str, Any]) -> None:
    """Each example patient, prefetched by the service's own discovery templates, gets the cards its index entry
    promises, and the response passes HealthChain's CDSResponse and the JSON Schema."""
    discovery = client.get("/cds-services").get_json()
    templates = discovery["services"][0]["prefetch"]
    bundle = as_of_now(example_bundle(example["file"]), AT.date())
    pid = patient_of(bundle)
    request = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:nxp2-cds:interop:{pid}")),
        "context": {"userId": "Practitioner/prac-1", "patientId": pid},
        "prefetch": prefetch_from_bundle(bundle, templates, pid),
    }
    body = _respond(client, request)
    assert card_tiers(body) == example["expected_cards"]
    _both_agree(body)


def test_examples_cover_every_kind_of_card() -> None:
    """The example patients above give risk cards at every tier and the screening card (notices: below)."""
    kinds = {(kind, tier) for e in EXAMPLES for kind, tier in e["expected_cards"].items()}
    assert {kind for kind, _ in kinds} >= {"refractory", "gi_perforation_death", "screening"}
    assert {tier for _, tier in kinds} >= {"info", "warning", "critical"}


def _child(age: int = 8) -> Json:
    return patient(birth=birth_date_for_age(age))


NOTICE_CHARTS = {
    # anti-NXP2 positive, edema, but no myositis diagnosis on the problem list
    "diagnosis-not-recorded": [_child(), nxp2_positive(), condition("R60.0")],
    # anti-NXP2 positive JDM, no birth date
    "age-unknown": [patient(birth=None), nxp2_positive(), condition("M33.00")],
}


@pytest.mark.usefixtures("healthchain")
@pytest.mark.parametrize("notice", sorted(NOTICE_CHARTS))
def test_notice_cards_pass_healthchain(client: FlaskClient, notice: str) -> None:
    """The two notices (info cards given instead of risk cards) pass HealthChain and the JSON Schema."""
    body = _respond(client, hook_request(NOTICE_CHARTS[notice]))
    assert card_tiers(body) == {"notice": "info"}
    _both_agree(body)


@pytest.mark.usefixtures("healthchain")
def test_screening_card_from_a_chart_passes_healthchain(client: FlaskClient) -> None:
    """JDM without any anti-NXP2 result: the screening card, with its suggestion to order the test."""
    body = _respond(client, hook_request([_child(), condition("M33.00")]))
    assert card_tiers(body) == {"screening": "info"}
    assert body["cards"][0].get("suggestions"), "the screening card suggests ordering the test"
    _both_agree(body)


def _card(**fields: Any) -> Json:
    return {"summary": "s", "indicator": "info", "source": {"label": "nxp2-cds"}} | fields


SUGGESTION = {"label": "Order", "uuid": "u-1", "isRecommended": False, "actions": []}
LINK = {"label": "Evidence", "url": "https://cds.example.org/evidence", "type": "absolute", "autoLaunchable": False}


@pytest.mark.usefixtures("healthchain")
@pytest.mark.parametrize(
    ("what", "card"),
    [
        ("summary of 140 characters", _card(summary="x" * 141)),
        ("unknown indicator", _card(indicator="hard-stop")),
        ("suggestions without selectionBehavior", _card(suggestions=[SUGGESTION])),
        ("suggestion without isRecommended", _card(suggestions=[{"label": "Order"}], selectionBehavior="any")),
        ("link without autoLaunchable", _card(links=[{k: v for k, v in LINK.items() if k != "autoLaunchable"}])),
        ("link with a relative url", _card(links=[LINK | {"url": "/evidence"}])),
        ("appContext on an absolute link", _card(links=[LINK | {"appContext": "x"}])),
    ],
)
def test_the_helper_bites(what: str, card: Json) -> None:
    """The HealthChain check is not vacuous: it refuses what the specification (as HealthChain reads it) forbids."""
    with pytest.raises(AssertionError, match="HealthChain"):
        assert_valid_healthchain({"cards": [card]})


@pytest.mark.usefixtures("healthchain")
def test_the_helper_accepts_a_complete_card() -> None:
    """A card with a suggestion and a link carrying every field HealthChain wants passes."""
    assert_valid_healthchain({"cards": [_card(suggestions=[SUGGESTION], selectionBehavior="any", links=[LINK])]})


@pytest.mark.usefixtures("healthchain")
def test_extension_is_left_alone() -> None:
    """The ``extension`` contract is the service's: HealthChain neither requires nor refuses it."""
    assert_valid_healthchain({"cards": [_card(extension={"nxp2-cds.assessment": {"outcome": "refractory"}})]})


def test_evaluation_time_is_the_examples_as_of() -> None:
    """The app's clock (tests.http_support) is the examples' "as of" moment, so their expected cards hold here."""
    assert datetime.fromisoformat(example_index()["as_of"].replace("Z", "+00:00")) == AT
