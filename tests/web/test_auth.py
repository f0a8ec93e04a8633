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
from jwt.algorithms import ECAlgorithm
from pytest_httpserver import HTTPServer

import cds_service.fhir.prefetch
import cds_service.web.api
from cds_service.kit.client_tokens import ClientKey
from cds_service.settings import SettingsError, load_settings
from cds_service.web.auth import MAX_JWKS_BYTES
from cds_service.web.runtime import runtime_of
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
    original = cds_service.fhir.prefetch.resolve

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("hook")
        return original(*args, **kwargs)

    monkeypatch.setattr(cds_service.web.api, "resolve", spy)
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


FRONT_DOOR_SECRET = "f" * 32


def front_door_apps(world: World, make_app: AppFactory, database_url: str) -> tuple[Any, Any]:
    """Two workers behind one front door (its secret in their settings), on one database."""
    settings = {
        "database_url": database_url,
        "public_base_url": PUBLIC,
        "auth": {"mode": "required", "issuers": [{"iss": EHR, "jwks_url": world.jwks_url}], "allow_http": True},
        "server": {"front_door_secret": FRONT_DOOR_SECRET},
    }
    return make_app(**settings), make_app(**settings)


def front_door_call(app: Any, token: str, header: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Nxp2-Front-Door": header}
    status: int = app.test_client().post(SERVICE_URL, json=REQUEST, headers=headers).status_code
    return status


def test_the_front_doors_second_hand_over_of_a_request_is_not_a_replay(
    world: World, make_app: AppFactory, database_url: str
) -> None:
    """The same request handed by the front door to a second worker (the first died before answering) carries the
    same request id: its JWT is accepted there, on SQLite and PostgreSQL."""
    first, second = front_door_apps(world, make_app, database_url)
    token = world.ehr.token(iss=EHR, aud=SERVICE_AUD)
    header = f"{FRONT_DOOR_SECRET} {'1' * 32}"
    assert (front_door_call(first, token, header), front_door_call(second, token, header)) == (200, 200)


def test_a_jwt_under_another_front_door_request_is_a_replay(
    world: World, make_app: AppFactory, database_url: str
) -> None:
    """The same JWT in another client request (another front-door request id) is refused as a replay."""
    first, second = front_door_apps(world, make_app, database_url)
    token = world.ehr.token(iss=EHR, aud=SERVICE_AUD)
    statuses = (
        front_door_call(first, token, f"{FRONT_DOOR_SECRET} {'1' * 32}"),
        front_door_call(second, token, f"{FRONT_DOOR_SECRET} {'2' * 32}"),
    )
    assert statuses == (200, 401)


def test_a_front_door_header_without_the_secret_does_not_excuse_a_replay(
    world: World, make_app: AppFactory, database_url: str
) -> None:
    """A client that forges the front door's header (without its secret) cannot replay a JWT under the same id."""
    first, second = front_door_apps(world, make_app, database_url)
    token = world.ehr.token(iss=EHR, aud=SERVICE_AUD)
    forged = f"{'0' * 32} {'1' * 32}"
    assert (front_door_call(first, token, forged), front_door_call(second, token, forged)) == (200, 401)


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


# -- claims of the wrong type (issue 13.1) ------------------------------------------------------------------------


def _signed_json(key: ClientKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A correctly signed token whose header and claims are exactly these (NaN and huge numbers included)."""
    head = b64(json.dumps(header, allow_nan=True).encode())
    body = b64(json.dumps(payload, allow_nan=True).encode())
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    signature = ECAlgorithm(ECAlgorithm.SHA384).sign(f"{head}.{body}".encode(), key.private_key)
    return f"{head}.{body}.{b64(signature)}"


def _now() -> int:
    return int(time.time())


ILL_TYPED: dict[str, Callable[[], tuple[dict[str, Any], dict[str, Any]]]] = {
    "exp-string": lambda: ({}, {"exp": str(_now() + 300)}),
    "iat-string": lambda: ({}, {"iat": str(_now())}),
    "nbf-string": lambda: ({}, {"nbf": str(_now())}),
    "exp-huge-integer": lambda: ({}, {"exp": 10**30}),
    "exp-1e308": lambda: ({}, {"exp": 1e308}),
    "exp-nan": lambda: ({}, {"exp": float("nan")}),
    "iat-nan": lambda: ({}, {"iat": float("nan")}),
    "nbf-nan": lambda: ({}, {"nbf": float("nan")}),
    "exp-boolean": lambda: ({}, {"exp": True}),
    "iat-negative-huge": lambda: ({}, {"iat": -(10**30)}),
    "jti-number": lambda: ({}, {"jti": 12345}),
    "jti-list": lambda: ({}, {"jti": ["a"]}),
    "jti-lone-surrogate": lambda: ({}, {"jti": "\ud800"}),
    "jti-10k": lambda: ({}, {"jti": "j" * 10_000}),
    "iss-number": lambda: ({}, {"iss": 1}),
    "iss-list": lambda: ({}, {"iss": [EHR]}),
    "aud-number": lambda: ({}, {"aud": 1}),
    "aud-object": lambda: ({}, {"aud": {"url": SERVICE_AUD}}),
    "alg-list": lambda: ({"alg": ["ES384"]}, {}),
    "alg-object": lambda: ({"alg": {"ES384": 1}}, {}),
}


@pytest.mark.parametrize("change", list(ILL_TYPED.values()), ids=list(ILL_TYPED))
def test_correctly_signed_token_with_ill_typed_claims_is_401(world: World, change: Callable[..., Any]) -> None:
    """A correctly signed JWT whose exp/iat/nbf is a string, a huge number, NaN or a boolean, or whose jti, iss, aud
    or alg has the wrong type, gets 401 (a string exp, an alg list and a lone-surrogate jti were 500s)."""
    header_change, claims_change = change()
    header = {"alg": "ES384", "typ": "JWT", "kid": world.ehr.kid} | header_change
    assert_rejected(world, world.post(_signed_json(world.ehr, header, claims() | claims_change)))


def test_overlong_token_is_refused_before_decoding(world: World) -> None:
    """An Authorization value longer than any client JWT (100 kB) gets 401."""
    assert_rejected(world, world.post("a" * 100_000))


# -- trust that works offline (issue 13.9) ------------------------------------------------------------------------


def _sample(app: Flask, name: str, **labels: str) -> float:
    """A sample of ``app``'s own metrics registry (0 before the first count)."""
    return runtime_of(app).metrics.registry.get_sample_value(name, labels) or 0.0


def _fetches(server: HTTPServer, path: str) -> int:
    return sum(1 for request, _ in server.log if request.path == path)


def _pinned_app(make_app: AppFactory, pinned: dict[str, Any], jku_allowlist: list[str]) -> Flask:
    issuer = {"iss": SANDBOX, "jku_allowlist": jku_allowlist} | pinned
    return make_app(public_base_url=PUBLIC, auth={"mode": "required", "issuers": [issuer], "allow_http": True})


def _post(app: Flask, token: str) -> Any:
    return app.test_client().post(SERVICE_URL, json=REQUEST, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(params=["jwks_file", "jwks"])
def pinned(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The sandbox's public keys pinned in the configuration, as a file or inline."""
    sandbox = client_keys()[2]
    if request.param == "jwks":
        return {"jwks": sandbox.jwks()}
    path = tmp_path / "sandbox-jwks.json"
    path.write_text(json.dumps(sandbox.jwks()))
    return {"jwks_file": str(path)}


def test_pinned_jwks_is_used_even_when_the_token_carries_jku(
    make_app: AppFactory, httpserver: HTTPServer, pinned: dict[str, Any]
) -> None:
    """A token with an allowlisted jku is verified against the pinned JWK Set, and the jku is never fetched (the
    issuer's URL is unreachable: trust works offline)."""
    jku = httpserver.url_for("/sandbox/jwks.json")
    httpserver.expect_request("/sandbox/jwks.json").respond_with_data("down", status=503)
    app = _pinned_app(make_app, pinned, [jku])
    response = _post(app, client_keys()[2].token(iss=SANDBOX, aud=SERVICE_AUD, jku=jku))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _fetches(httpserver, "/sandbox/jwks.json") == 0


def test_pinned_jwks_does_not_admit_a_jku_off_the_allowlist(
    make_app: AppFactory, httpserver: HTTPServer, pinned: dict[str, Any]
) -> None:
    """With a pinned JWK Set, a token whose jku is not on the issuer's allowlist is still refused, and nothing is
    fetched."""
    app = _pinned_app(make_app, pinned, [httpserver.url_for("/sandbox/jwks.json")])
    response = _post(app, client_keys()[2].token(iss=SANDBOX, aud=SERVICE_AUD, jku=httpserver.url_for("/evil.json")))
    assert response.status_code == 401
    assert httpserver.log == []


def test_pinned_jwks_with_an_unknown_kid_is_refused_without_fetching(
    make_app: AppFactory, httpserver: HTTPServer, pinned: dict[str, Any]
) -> None:
    """A kid that the pinned JWK Set does not hold is refused; the allowlisted jku is not fetched to look for it."""
    jku = httpserver.url_for("/sandbox/jwks.json")
    app = _pinned_app(make_app, pinned, [jku])
    stranger = ClientKey.generate("ES384", kid="not-pinned")
    assert _post(app, stranger.token(iss=SANDBOX, aud=SERVICE_AUD, jku=jku)).status_code == 401
    assert httpserver.log == []


def test_inline_jwks_and_jwks_file_together_are_refused(tmp_path: Path) -> None:
    """An issuer may pin its keys once: jwks_file and inline jwks together stop the configuration."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(client_keys()[2].jwks()))
    issuer = {"iss": SANDBOX, "jwks_file": str(path), "jwks": client_keys()[2].jwks()}
    with pytest.raises(SettingsError, match="jwks_file and jwks"):
        load_settings(auth={"issuers": [issuer]})


def test_inline_jwks_must_be_a_jwk_set() -> None:
    """An inline jwks without a ``keys`` list stops the configuration with a message naming it."""
    with pytest.raises(SettingsError, match="must be a JWK Set"):
        load_settings(auth={"issuers": [{"iss": SANDBOX, "jwks": {"kty": "EC"}}]})


def _answering(**response: Any) -> Callable[[HTTPServer], str]:
    """The issuer's JWKS URL on the test server, answering ``response``."""

    def configure(server: HTTPServer) -> str:
        server.expect_request("/jwks.json").respond_with_data(**response)
        return server.url_for("/jwks.json")

    return configure


JWKS_FAILURES: dict[str, tuple[Callable[[HTTPServer], str], str]] = {
    "network": (lambda server: "http://127.0.0.1:9/jwks.json", "network"),
    "status": (_answering(response_data='{"error": "down"}', status=500, content_type="application/json"), "status"),
    "redirect": (_answering(response_data="", status=302, headers={"Location": "/other.json"}), "status"),
    "not-json": (_answering(response_data="<html>maintenance</html>"), "not-a-jwk-set"),
    "not-a-jwk-set": (_answering(response_data='{"keys": "none"}', content_type="application/json"), "not-a-jwk-set"),
    "too-large": (_answering(response_data=b" " * (MAX_JWKS_BYTES + 1)), "too-large"),
}


@pytest.mark.parametrize("failure", list(JWKS_FAILURES.values()), ids=list(JWKS_FAILURES))
def test_jwks_fetch_failure_has_its_own_reason_and_metric(
    make_app: AppFactory,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    failure: tuple[Callable[[HTTPServer], str], str],
) -> None:
    """When the issuer's JWKS cannot be fetched (network error, non-200, not JSON, not a JWK Set, too large) the
    token is refused with the reason jwks-fetch-failed (not unknown-kid), logged with its cause and counted."""
    configure, cause = failure
    url = configure(httpserver)
    issuers = [{"iss": EHR, "jwks_url": url}]
    app = make_app(
        public_base_url=PUBLIC,
        auth={"mode": "required", "issuers": issuers, "allow_http": True, "jwks_timeout_seconds": 0.5},
    )
    refused = _sample(app, "nxp2_cds_auth_failures_total", reason="jwks-fetch-failed")
    failed = _sample(app, "nxp2_cds_jwks_fetch_failures_total", cause=cause)
    capsys.readouterr()
    assert _post(app, client_keys()[0].token(iss=EHR, aud=SERVICE_AUD)).status_code == 401
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert {"event": "auth.rejected", "reason": "jwks-fetch-failed"}.items() <= next(
        line for line in lines if line["event"] == "auth.rejected"
    ).items()
    assert any(line["event"] == "auth.jwks_fetch_failed" and line["cause"] == cause for line in lines)
    assert _sample(app, "nxp2_cds_auth_failures_total", reason="jwks-fetch-failed") == refused + 1
    assert _sample(app, "nxp2_cds_jwks_fetch_failures_total", cause=cause) == failed + 1


def test_cached_jwks_is_used_while_the_issuer_is_unreachable(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """Keys fetched once keep working after their cache time while the JWKS URL fails: the stale copy is used."""
    ehr = client_keys()[0]
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(ehr.jwks())
    httpserver.expect_ordered_request("/jwks.json").respond_with_data("down", status=503)
    issuers = [{"iss": EHR, "jwks_url": httpserver.url_for("/jwks.json")}]
    app = make_app(
        public_base_url=PUBLIC,
        auth={"mode": "required", "issuers": issuers, "allow_http": True, "jwks_cache_seconds": 0},
    )
    assert _post(app, ehr.token(iss=EHR, aud=SERVICE_AUD)).status_code == 200
    assert _post(app, ehr.token(iss=EHR, aud=SERVICE_AUD)).status_code == 200
    assert _fetches(httpserver, "/jwks.json") == 2


def test_unknown_kid_with_a_reachable_jwks_is_still_unknown_kid(
    make_app: AppFactory, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kid the issuer's (reachable) JWKS does not hold is refused as unknown-kid, not as a fetch failure."""
    httpserver.expect_request("/jwks.json").respond_with_json(client_keys()[0].jwks())
    issuers = [{"iss": EHR, "jwks_url": httpserver.url_for("/jwks.json")}]
    app = make_app(public_base_url=PUBLIC, auth={"mode": "required", "issuers": issuers, "allow_http": True})
    capsys.readouterr()
    stranger = ClientKey.generate("ES384", kid="stranger")
    assert _post(app, stranger.token(iss=EHR, aud=SERVICE_AUD)).status_code == 401
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["reason"] for line in lines if line["event"] == "auth.rejected"] == ["unknown-kid"]
