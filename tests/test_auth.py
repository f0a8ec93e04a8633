"""CDS client JWT verification: a matrix of forged, broken and valid tokens on every endpoint.

Every rejected case asserts the status (401, with WWW-Authenticate and no detail) and that the hook did not run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from pytest_httpserver import HTTPServer

import cds_service.api
import cds_service.prefetch
from cds_service.client_tokens import ClientKey
from tests.builders import condition, hook_request, patient
from tests.http_support import FEEDBACK_URL, SERVICE_URL, AppFactory
from tests.synthetic_patients import nxp2_positive

PUBLIC = "https://cds.example.org"
SERVICE_AUD = PUBLIC + SERVICE_URL
EHR = "https://ehr.example.org"
EPIC = "https://fhir.epic.example.org/interconnect"
SANDBOX = "https://sandbox.cds-hooks.org"
TENANTED = "https://tenanted.example.org"
REQUEST = hook_request([patient(), nxp2_positive(), condition("M33.00"), condition("R60.0")])


@dataclass
class World:
    app: Flask
    jwks: HTTPServer
    ehr: ClientKey
    epic: ClientKey
    sandbox: ClientKey
    calls: list[str]

    @property
    def jwks_url(self) -> str:
        return self.jwks.url_for("/ehr/jwks.json")

    @property
    def sandbox_jku(self) -> str:
        return self.jwks.url_for("/sandbox/jwks.json")

    def post(self, token: str | None, url: str = SERVICE_URL, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.app.test_client().post(url, json=REQUEST if body is None else body, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)])


def claims(iss: str = EHR, aud: str | list[str] = SERVICE_AUD, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": f"jti-{time.monotonic_ns()}"} | extra


@functools.cache
def client_keys() -> tuple[ClientKey, ClientKey, ClientKey]:
    """The three clients' keys, generated once (RSA generation is slow)."""
    return (
        ClientKey.generate("ES384", kid="ehr-es384-1"),
        ClientKey.generate("RS384", kid="epic-rs384-1"),
        ClientKey.generate("ES384", kid="sandbox-1"),
    )


@pytest.fixture
def world(make_app: AppFactory, httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    ehr, epic, sandbox = client_keys()
    httpserver.expect_request("/ehr/jwks.json").respond_with_json(ehr.jwks())
    httpserver.expect_request("/sandbox/jwks.json").respond_with_json(sandbox.jwks())
    epic_file = tmp_path / "epic-jwks.json"
    epic_file.write_text(json.dumps(epic.jwks()))
    issuers = [
        {"iss": EHR, "jwks_url": httpserver.url_for("/ehr/jwks.json")},
        {"iss": EPIC, "jwks_file": str(epic_file)},
        {"iss": SANDBOX, "jku_allowlist": [httpserver.url_for("/sandbox/jwks.json")]},
        {"iss": TENANTED, "jwks_url": httpserver.url_for("/ehr/jwks.json"), "tenants": ["hospital-a"]},
    ]
    app = make_app(public_base_url=PUBLIC, auth={"mode": "required", "issuers": issuers, "allow_http": True})
    calls: list[str] = []
    original = cds_service.prefetch.resolve

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("hook")
        return original(*args, **kwargs)

    monkeypatch.setattr(cds_service.api, "resolve", spy)
    return World(app, httpserver, ehr, epic, sandbox, calls)


def assert_rejected(world: World, response: Any) -> None:
    """401, a WWW-Authenticate challenge, no detail, and the hook did not run."""
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json(force=True)
    assert body["issue"][0]["diagnostics"] == "Authentication failed."
    assert world.calls == []


Forge = Callable[[World], str | None]

REJECTED: dict[str, Forge] = {
    "missing-header": lambda w: None,
    "malformed": lambda w: "not.a.jwt",
    "garbage": lambda w: "🙂",
    "alg-none": lambda w: unsigned({"alg": "none", "typ": "JWT", "kid": w.ehr.kid}, claims()),
    "hs256-with-public-key-as-secret": lambda w: _hs256_with_public_key(w),
    "wrong-audience": lambda w: w.ehr.token(iss=EHR, aud=PUBLIC + "/cds-services/other-service"),
    "internal-url-audience": lambda w: w.ehr.token(iss=EHR, aud="http://localhost" + SERVICE_URL),
    "expired": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, now=time.time() - 3600, lifetime_seconds=300),
    "issued-in-the-future": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, now=time.time() + 600),
    "unknown-issuer": lambda w: w.ehr.token(iss="https://evil.example.com", aud=SERVICE_AUD),
    "jku-not-on-allowlist": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, jku="https://evil.example.com/jwks"),
    "jku-of-another-issuer": lambda w: w.sandbox.token(iss=EHR, aud=SERVICE_AUD, jku=w.sandbox_jku),
    "unknown-kid": lambda w: ClientKey.generate("ES384", kid="nobody").token(iss=EHR, aud=SERVICE_AUD),
    "right-kid-wrong-key": lambda w: ClientKey.generate("ES384", kid=w.ehr.kid).token(iss=EHR, aud=SERVICE_AUD),
    "wrong-tenant": lambda w: w.ehr.token(iss=TENANTED, aud=SERVICE_AUD, tenant="hospital-b"),
    "missing-tenant": lambda w: w.ehr.token(iss=TENANTED, aud=SERVICE_AUD),
    "missing-jti": lambda w: _signed(w.ehr, {k: v for k, v in claims().items() if k != "jti"}),
    "missing-exp": lambda w: _signed(w.ehr, {k: v for k, v in claims().items() if k != "exp"}),
    "missing-typ": lambda w: _signed(w.ehr, claims(), headers={"typ": None}),
    "lifetime-too-long": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, lifetime_seconds=2 * 3600),
    "not-yet-valid-nbf": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, extra_claims={"nbf": int(time.time()) + 600}),
    "es256-not-allowed": lambda w: _es256(w),
    "rs384-key-claims-es384": lambda w: _lying_alg(w.epic, "ES384"),
    "basic-scheme": lambda w: "Basic dXNlcjpwYXNz",
}


def _signed(key: ClientKey, payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    """A correctly signed token with exactly these claims and header changes (``None`` removes a header)."""
    token: str = jwt.encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"} | (headers or {})
    )
    return token


def _lying_alg(key: ClientKey, alg: str) -> str:
    """A token whose header names another algorithm than the one it was signed with."""
    head, body, signature = key.token(iss=EPIC, aud=SERVICE_AUD).split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    return ".".join([b64(json.dumps(header | {"alg": alg}).encode()), body, signature])


def _hs256_with_public_key(w: World) -> str:
    """The classic algorithm-confusion forgery: HMAC-SHA256 keyed with the issuer's public key."""
    public_pem = w.ehr.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": w.ehr.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def _es256(w: World) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims(), key, algorithm="ES256", headers={"kid": w.ehr.kid, "typ": "JWT"})


@pytest.mark.parametrize("forge", list(REJECTED.values()), ids=list(REJECTED))
def test_rejected_tokens(world: World, forge: Forge) -> None:
    """A missing, malformed, forged, misdirected or stale token gets 401 and the hook does not run."""
    assert_rejected(world, world.post(forge(world)))


ACCEPTED: dict[str, Forge] = {
    "es384": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD),
    "rs384-static-jwks-file": lambda w: w.epic.token(iss=EPIC, aud=SERVICE_AUD),
    "epic-style-sub-and-nbf": lambda w: w.epic.token(
        iss=EPIC, aud=SERVICE_AUD, extra_claims={"sub": "client-id-123", "nbf": int(time.time()) - 5}
    ),
    "sandbox-style-es384-jku": lambda w: w.sandbox.token(iss=SANDBOX, aud=SERVICE_AUD, jku=w.sandbox_jku),
    "jku-equal-to-jwks-url": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, jku=w.jwks_url),
    "audience-array": lambda w: w.ehr.token(iss=EHR, aud=[SERVICE_AUD, "https://other.example.org"]),
    "right-tenant": lambda w: w.ehr.token(iss=TENANTED, aud=SERVICE_AUD, tenant="hospital-a"),
    "small-clock-skew": lambda w: w.ehr.token(iss=EHR, aud=SERVICE_AUD, now=time.time() + 30),
}


@pytest.mark.parametrize("forge", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepted_tokens(world: World, forge: Forge) -> None:
    """A valid client token (ES384 or RS384, with or without jku, extra claims) reaches the hook."""
    response = world.post(forge(world))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert world.calls == ["hook"]


def test_replayed_jti_is_rejected(world: World) -> None:
    """The same token used twice is refused the second time, before the hook runs."""
    token = world.ehr.token(iss=EHR, aud=SERVICE_AUD)
    assert world.post(token).status_code == 200
    world.calls.clear()
    assert_rejected(world, world.post(token))


def test_replay_store_is_shared_by_apps_on_one_database(world: World, make_app: AppFactory, tmp_path: Path) -> None:
    """A jti used on one service instance is refused by another on the same database."""
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    issuers = [{"iss": EHR, "jwks_url": world.jwks_url}]
    first = make_app(
        database_url=database, public_base_url=PUBLIC, auth={"mode": "required", "issuers": issuers, "allow_http": True}
    )
    second = make_app(
        database_url=database, public_base_url=PUBLIC, auth={"mode": "required", "issuers": issuers, "allow_http": True}
    )
    token = world.ehr.token(iss=EHR, aud=SERVICE_AUD)
    headers = {"Authorization": f"Bearer {token}"}
    assert first.test_client().post(SERVICE_URL, json=REQUEST, headers=headers).status_code == 200
    assert second.test_client().post(SERVICE_URL, json=REQUEST, headers=headers).status_code == 401


def test_key_rotation_refreshes_the_jwks_once(world: World) -> None:
    """After the client rotates its key, a token with the new kid makes the service re-fetch the JWKS once."""
    assert world.post(world.ehr.token(iss=EHR, aud=SERVICE_AUD)).status_code == 200
    rotated = ClientKey.generate("ES384", kid="ehr-es384-2")
    world.jwks.clear()
    world.jwks.expect_request("/ehr/jwks.json").respond_with_json(
        {"keys": [world.ehr.public_jwk(), rotated.public_jwk()]}
    )
    assert world.post(rotated.token(iss=EHR, aud=SERVICE_AUD)).status_code == 200
    assert [r.path for r, _ in world.jwks.log] == ["/ehr/jwks.json"]


def test_untrusted_jku_is_never_fetched(world: World) -> None:
    """A token pointing at a JWKS off the allowlist causes no request to that URL."""
    forged = world.ehr.token(iss=EHR, aud=SERVICE_AUD, jku=world.jwks.url_for("/attacker/jwks.json"))
    assert_rejected(world, world.post(forged))
    assert "/attacker/jwks.json" not in [r.path for r, _ in world.jwks.log]


def test_unreachable_jwks_is_401_not_500(make_app: AppFactory) -> None:
    """When the issuer's JWKS cannot be fetched, calls are refused with 401, not an error."""
    issuers = [{"iss": EHR, "jwks_url": "http://127.0.0.1:9/jwks.json"}]
    app = make_app(
        public_base_url=PUBLIC,
        auth={"mode": "required", "issuers": issuers, "allow_http": True, "jwks_timeout_seconds": 0.5},
    )
    token = ClientKey.generate().token(iss=EHR, aud=SERVICE_AUD)
    response = app.test_client().post(SERVICE_URL, json=REQUEST, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_discovery_needs_a_token_for_its_own_url(world: World) -> None:
    """Discovery is protected too; its audience is the discovery URL."""
    client = world.app.test_client()
    assert client.get("/cds-services").status_code == 401
    token = world.ehr.token(iss=EHR, aud=PUBLIC + "/cds-services")
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_feedback_needs_a_token_and_stores_nothing_without(world: World) -> None:
    """Feedback without a valid token is refused; with one (audience: the feedback URL) it is stored."""
    document = {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:00:00Z"}]}
    assert world.post(None, FEEDBACK_URL, document).status_code == 401
    assert world.post(world.ehr.token(iss=EHR, aud=SERVICE_AUD), FEEDBACK_URL, document).status_code == 401
    ok = world.post(world.ehr.token(iss=EHR, aud=PUBLIC + FEEDBACK_URL), FEEDBACK_URL, document)
    assert ok.get_json() == {"received": 1, "stored": 1, "duplicates": 0}


def test_cors_preflight_needs_no_token(world: World) -> None:
    """Browsers send preflight without credentials: it is answered without a token."""
    response = world.app.test_client().options(
        SERVICE_URL,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200


def test_openapi_document_needs_no_token(world: World) -> None:
    """The OpenAPI description is public and declares the bearer JWT scheme."""
    document = world.app.test_client().get("/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["cdsClientJwt"]["scheme"] == "bearer"
