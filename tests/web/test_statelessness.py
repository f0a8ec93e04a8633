"""Statelessness: two server processes (gunicorn, as `nxp2-cds serve` runs them) on one PostgreSQL database behave as
one service — a jti used on one is refused by the other, feedback posted to either is stored, and the cards both
issue are in one report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from cds_service.kit.client_tokens import ClientKey
from tests.builders import condition, hook_request, patient
from tests.server_process import serving
from tests.synthetic_patients import nxp2_positive

PUBLIC = "https://cds.hospital.example.org"  # both instances sit behind one load balancer
ISSUER = "https://ehr.hospital.example.org"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[tuple[str, str, ClientKey]]:
    """Two running instances on one fresh PostgreSQL database, trusting one EHR's key (static JWKS file)."""
    key = ClientKey.generate()
    (tmp_path / "ehr-jwks.json").write_text(json.dumps(key.jwks()))
    config = tmp_path / "site.toml"
    config.write_text(
        f'public_base_url = "{PUBLIC}"\n[auth]\nmode = "required"\n'
        f'[[auth.issuers]]\niss = "{ISSUER}"\njwks_file = "{tmp_path / "ehr-jwks.json"}"\n'
    )
    with ExitStack() as stack:
        settings = {"NXP2_CDS_CONFIG": str(config), "NXP2_CDS_DATABASE_URL": postgres_url}
        first = stack.enter_context(serving(tmp_path, "--migrate", settings=settings))
        second = stack.enter_context(serving(tmp_path, "--migrate", settings=settings))
        yield first, second, key


def call(base: str, key: ClientKey, path: str, body: Any, token: str | None = None) -> requests.Response:
    token = token or key.token(iss=ISSUER, aud=PUBLIC + path)
    return requests.post(base + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


SERVICE = "/cds-services/nxp2-jdm-risk"
FEEDBACK = SERVICE + "/feedback"
CHART = [patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")]


def test_a_jti_used_on_one_instance_is_refused_by_the_other(pair: tuple[str, str, ClientKey]) -> None:
    """The replay store is shared: the same token works once, whichever instance sees it first."""
    first, second, key = pair
    token = key.token(iss=ISSUER, aud=PUBLIC + SERVICE)
    assert call(first, key, SERVICE, hook_request(CHART), token).status_code == 200
    assert call(second, key, SERVICE, hook_request(CHART), token).status_code == 401


def test_feedback_to_either_instance_is_stored(pair: tuple[str, str, ClientKey], postgres_url: str) -> None:
    """Feedback acknowledged by either instance is in the shared database."""
    first, second, key = pair
    for base, card in ((first, "card-a"), (second, "card-b")):
        body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:00:00Z"}]}
        assert call(base, key, FEEDBACK, body).status_code == 200
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            cards = sorted(r[0] for r in connection.execute(sa.text("SELECT card_uuid FROM feedback")))
    finally:
        engine.dispose()
    assert cards == ["card-a", "card-b"]


def test_cards_issued_by_both_are_in_one_report(pair: tuple[str, str, ClientKey], postgres_url: str) -> None:
    """`nxp2-cds feedback report` counts the cards issued by both instances."""
    first, second, key = pair
    for base, instance_id in (
        (first, "11111111-1111-4111-8111-111111111111"),
        (second, "22222222-2222-4222-8222-222222222222"),
    ):
        assert call(base, key, SERVICE, hook_request(CHART, hook_instance=instance_id)).status_code == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXP2_CDS_")} | {
        "NXP2_CDS_DATABASE_URL": postgres_url
    }
    deadline = time.monotonic() + 15
    while True:  # issued cards are written off the hot path, in batches
        out = subprocess.run(
            [sys.executable, "-m", "cds_service.cli", "feedback", "report", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        issued = sum(row["cards_issued"] for row in json.loads(out)["rows"])
        if issued >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert issued == 4
