"""Links and the JWT audience come from configuration, never from the request's Host header (issue 13.8):
``public_base_url``, or on loopback the address the server is bound to; off loopback without it, no start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from cds_service.kit.client_tokens import ClientKey
from tests.builders import condition, hook_request, patient
from tests.http_support import FEEDBACK_URL, SERVICE_URL, AppFactory
from tests.server_process import clean_environment, free_port, serving
from tests.synthetic_patients import nxp2_positive

EVIL = "evil.example"
REQUEST = hook_request([patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")])
ISSUER = "https://ehr.example.org"


def links(response: Any) -> list[str]:
    return [link["url"] for card in response.get_json()["cards"] for link in card["links"]]


def test_cards_never_link_to_the_host_header(make_app: AppFactory) -> None:
    """With public_base_url unset, a request with 'Host: evil.example' gets links to the bound address, not to
    evil.example."""
    app = make_app(server={"host": "127.0.0.1", "port": 8123})
    response = app.test_client().post(SERVICE_URL, json=REQUEST, headers={"Host": EVIL})
    assert response.status_code == 200
    assert links(response)
    assert all(url.startswith("http://127.0.0.1:8123/evidence#") for url in links(response))
    assert EVIL not in response.get_data(as_text=True)


def test_loopback_default_links_to_127_0_0_1_and_the_port(make_app: AppFactory) -> None:
    """With no public_base_url and the default [server] host, links point to http://127.0.0.1:<port>/evidence."""
    app = make_app(server={"port": 8124})
    assert links(app.test_client().post(SERVICE_URL, json=REQUEST)) == [
        "http://127.0.0.1:8124/evidence#refractory",
        "http://127.0.0.1:8124/evidence#gi_perforation_death",
    ]


def test_ipv6_loopback_is_bracketed(make_app: AppFactory) -> None:
    """Bound to ::1, links point to http://[::1]:<port>/evidence."""
    app = make_app(server={"host": "::1", "port": 8125})
    response = app.test_client().post(SERVICE_URL, json=REQUEST, headers={"Host": EVIL})
    assert all(url.startswith("http://[::1]:8125/evidence#") for url in links(response))


def test_public_base_url_wins_over_host_and_bound_address(make_app: AppFactory) -> None:
    """With public_base_url set, links use it whatever the Host header and the bound address."""
    app = make_app(public_base_url="https://cds.example.org/nxp2", server={"port": 8126})
    response = app.test_client().post(SERVICE_URL, json=REQUEST, headers={"Host": EVIL})
    assert all(url.startswith("https://cds.example.org/nxp2/evidence#") for url in links(response))


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/cds-services/no-such-service", REQUEST),
        ("POST", SERVICE_URL, {"hook": "patient-view"}),
        ("POST", SERVICE_URL, hook_request([patient()]) | {"prefetch": {}}),
        ("POST", FEEDBACK_URL, {"feedback": "nope"}),
        ("GET", "/no-such-page", None),
    ],
    ids=["unknown service", "invalid request", "prefetch unavailable", "invalid feedback", "unknown route"],
)
def test_operation_outcomes_never_carry_the_host_header(make_app: AppFactory, method: str, url: str, body: Any) -> None:
    """Error answers (404, 400, 412) never echo 'Host: evil.example', in the body or in a header."""
    app = make_app()
    response = app.test_client().open(url, method=method, json=body, headers={"Host": EVIL})
    assert response.status_code >= 400
    assert EVIL not in response.get_data(as_text=True)
    assert all(EVIL not in value for _, value in response.headers.items())


@pytest.fixture
def guarded(make_app: AppFactory, tmp_path: Path) -> tuple[Flask, ClientKey]:
    """The service with authentication required, bound to 127.0.0.1:8127, no public_base_url; and a trusted key."""
    key = ClientKey.generate("ES384", kid="links-1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(key.jwks()))
    app = make_app(
        server={"port": 8127}, auth={"mode": "required", "issuers": [{"iss": ISSUER, "jwks_file": str(jwks)}]}
    )
    return app, key


def test_audience_from_the_host_header_is_refused(guarded: tuple[Flask, ClientKey]) -> None:
    """A token whose aud is the Host-derived URL (http://evil.example/...) is refused, with Host: evil.example."""
    app, key = guarded
    token = key.token(iss=ISSUER, aud=f"http://{EVIL}{SERVICE_URL}")
    response = app.test_client().post(
        SERVICE_URL, json=REQUEST, headers={"Host": EVIL, "Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


def test_audience_is_the_bound_address_whatever_the_host(guarded: tuple[Flask, ClientKey]) -> None:
    """A token for http://127.0.0.1:<port>/... is accepted even when the Host header says otherwise."""
    app, key = guarded
    token = key.token(iss=ISSUER, aud=f"http://127.0.0.1:8127{SERVICE_URL}")
    response = app.test_client().post(
        SERVICE_URL, json=REQUEST, headers={"Host": EVIL, "Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert EVIL not in response.get_data(as_text=True)


def test_serve_refuses_an_open_address_without_public_base_url(tmp_path: Path) -> None:
    """`nxp2-cds serve --host 0.0.0.0` with authentication disabled explicitly and no public_base_url exits 2 at
    once, saying why, before it listens anywhere."""
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=clean_environment(NXP2_CDS_AUTH__MODE="disabled"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()  # this process only, by its PID
            process.wait(10)
    assert process.returncode == 2
    assert "refusing to serve on 0.0.0.0 without public_base_url" in stderr
    assert not (tmp_path / "nxp2-cds.sqlite3").exists()


def test_served_links_use_the_bound_port(tmp_path: Path) -> None:
    """`nxp2-cds serve --port N` on loopback: the workers' cards link to http://127.0.0.1:N/evidence, even for a
    request sent with 'Host: evil.example'."""
    with serving(tmp_path) as base:
        response = requests.post(f"{base}{SERVICE_URL}", json=REQUEST, headers={"Host": EVIL}, timeout=30)
    assert response.status_code == 200
    urls = [link["url"] for card in response.json()["cards"] for link in card["links"]]
    assert urls
    assert all(url.startswith(f"{base}/evidence#") for url in urls)
