"""Outbound FHIR safety: the service is never a tool to call arbitrary URLs with a hospital's token."""

from __future__ import annotations

from typing import Any

from pytest_httpserver import HTTPServer

from tests.builders import PID, condition, hook_request, patient, searchset
from tests.http_support import SERVICE_URL, AppFactory
from tests.synthetic_patients import nxp2_positive

TOKEN = "hospital-token"


def request(fhir_server: str, **prefetch: Any) -> dict[str, Any]:
    """A request that lacks the conditions key (so the service must fetch) unless ``prefetch`` says otherwise."""
    document = hook_request([patient(), nxp2_positive(), condition("M33.00")])
    del document["prefetch"]["conditions"]
    document["prefetch"].update(prefetch)
    document["fhirServer"] = fhir_server
    document["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "nxp2-cds",
    }
    return document


def test_fhir_server_off_the_allowlist_gets_no_request(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A fhirServer that is not on the allowlist is answered 412 and never contacted."""
    app = make_app(fhir={"allowed_servers": ["https://fhir.hospital.example.org/r4"], "allow_http": True})
    response = app.test_client().post(SERVICE_URL, json=request(httpserver.url_for("/fhir")))
    assert response.status_code == 412
    assert "allowlist" in response.get_json(force=True)["issue"][0]["diagnostics"]
    assert httpserver.log == []


def test_plain_http_is_refused_unless_allowed(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """An allowlisted server over plain http is not contacted while allow_http is false."""
    app = make_app(fhir={"allowed_servers": [httpserver.url_for("/fhir")], "allow_http": False})
    assert app.test_client().post(SERVICE_URL, json=request(httpserver.url_for("/fhir"))).status_code == 412
    assert httpserver.log == []


def test_lookalike_host_does_not_match_a_prefix_entry(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A prefix entry 'https://fhir.example.org/*' does not admit 'https://fhir.example.org.evil.com'."""
    app = make_app(fhir={"allowed_servers": ["http://localhost/*"], "allow_http": True})
    evil = httpserver.url_for("/fhir").replace("localhost", "localhost.localdomain")
    assert app.test_client().post(SERVICE_URL, json=request(evil)).status_code == 412
    assert httpserver.log == []


def test_credentials_in_fhir_server_url_are_refused(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A fhirServer URL carrying user:password is refused without a request."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    sneaky = base.replace("http://", "http://user:pass@")
    assert app.test_client().post(SERVICE_URL, json=request(sneaky)).status_code == 412
    assert httpserver.log == []


def test_cross_origin_redirect_is_not_followed(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A redirect to another origin is not followed: the only request is the one to the allowed server."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    other_origin = base.replace("localhost", "127.0.0.1").replace("/fhir", "/stolen")
    httpserver.expect_request("/fhir/Condition").respond_with_data("", status=302, headers={"Location": other_origin})
    response = app.test_client().post(SERVICE_URL, json=request(base))
    assert response.status_code == 412
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition"]


def test_same_origin_redirect_is_followed(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A redirect within the same origin is followed."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    httpserver.expect_request("/fhir/Condition").respond_with_data(
        "", status=307, headers={"Location": httpserver.url_for("/fhir/moved/Condition")}
    )
    httpserver.expect_request("/fhir/moved/Condition").respond_with_json(searchset())
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 200
    assert [r.path for r, _ in httpserver.log] == ["/fhir/Condition", "/fhir/moved/Condition"]


def test_foreign_next_link_is_not_followed(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A prefetched Bundle whose next link points to another origin gets 412 and no request at all."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    paged = searchset() | {"link": [{"relation": "next", "url": base.replace("localhost", "127.0.0.1") + "/p2"}]}
    response = app.test_client().post(SERVICE_URL, json=request(base, conditions=paged))
    assert response.status_code == 412
    assert httpserver.log == []


def test_oversized_answer_is_refused(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """An answer larger than max_response_bytes is not read past the cap and gives 412."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True, "max_response_bytes": 10_000})
    httpserver.expect_request("/fhir/Condition").respond_with_json(
        searchset(*[patient(pid=f"x{i}") for i in range(200)])
    )
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 412


def test_the_token_goes_only_to_the_allowed_server(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """The bearer token is sent to the allowed server and the patient in context only."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    httpserver.expect_request("/fhir/Condition", query_string={"patient": PID}).respond_with_json(searchset())
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 200
    ((sent, _),) = httpserver.log
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
