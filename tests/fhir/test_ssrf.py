"""Outbound FHIR safety: the service is never a tool to call arbitrary URLs with a hospital's token."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from flask import Flask
from pytest_httpserver import HTTPServer

from cds_service.fhir.client import ServerPolicy
from cds_service.web.runtime import runtime_of
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
    """A redirect within the same origin and under the base path is followed."""
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


@pytest.mark.parametrize("link", ["https://[evil.example/x", "//[::1", "https://fhir.example.org\uff0fadmin"])
def test_an_unparseable_next_link_gets_412_not_500(make_app: AppFactory, httpserver: HTTPServer, link: str) -> None:
    """A prefetched Bundle whose next link has a host part urllib cannot split (an unclosed IPv6 bracket, a
    full-width solidus) gets 412 with an OperationOutcome and no request (it was a 500)."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    paged = searchset() | {"link": [{"relation": "next", "url": link}]}
    response = app.test_client().post(SERVICE_URL, json=request(base, conditions=paged))
    assert (response.status_code, response.get_json()["resourceType"]) == (412, "OperationOutcome")
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


# -- walk-arounds: paths normalised before the allowlist, redirects and next links under the allowed base -------


def prefix_app(make_app: AppFactory, httpserver: HTTPServer, base: str = "/fhir") -> Flask:
    """The service with a prefix allowlist entry ``…/fhir/*`` (or ``base``/*) on the test server."""
    return make_app(fhir={"allowed_servers": [httpserver.url_for(base) + "/*"], "allow_http": True})


def admin_is_served(httpserver: HTTPServer) -> None:
    """An /admin endpoint that answers like a FHIR server would, so reaching it would give cards (not 412)."""
    httpserver.expect_request(re.compile(r"^/admin.*")).respond_with_json(searchset())


def paths(httpserver: HTTPServer) -> list[str]:
    return [r.path for r, _ in httpserver.log]


WALK_AROUNDS = {
    "dot segments": "/fhir/../admin",
    "percent-encoded dots": "/fhir/%2e%2e/admin",
    "percent-encoded dots, upper case": "/fhir/%2E%2E/admin",
    "half-encoded dots": "/fhir/.%2e/admin",
    "double slashes around the dots": "/fhir//..//admin",
    "backslashes": "/fhir\\..\\admin",
    "encoded backslashes": "/fhir/%5c..%5cadmin",
    "encoded slashes": "/fhir/%2f..%2fadmin",
    "double-encoded dots": "/fhir/%252e%252e/admin",
    "a path parameter (Tomcat ..;)": "/fhir/..;/admin",
    "a query": "/fhir?_=/../admin",
    "a fragment": "/fhir#/../../admin",
    "a malformed percent-encoding": "/fhir/%zz/../admin",
}


@pytest.mark.parametrize("suffix", WALK_AROUNDS.values(), ids=WALK_AROUNDS.keys())
def test_fhir_server_walk_around_is_refused_without_a_request(
    make_app: AppFactory, httpserver: HTTPServer, suffix: str
) -> None:
    """A fhirServer that leaves the allowed prefix once normalised (or cannot be normalised safely) is answered
    412 and nothing is requested: /admin is never reached."""
    app = prefix_app(make_app, httpserver)
    admin_is_served(httpserver)
    response = app.test_client().post(SERVICE_URL, json=request(f"http://localhost:{httpserver.port}{suffix}"))
    assert response.status_code == 412
    assert httpserver.log == []


def test_userinfo_pointing_at_another_host_is_refused(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """'http://localhost:PORT@127.0.0.1:PORT/admin' (the allowed host as userinfo, another host after '@') is
    refused without a request."""
    app = make_app(fhir={"allowed_servers": [f"http://localhost:{httpserver.port}/*"], "allow_http": True})
    admin_is_served(httpserver)
    sneaky = f"http://localhost:{httpserver.port}@127.0.0.1:{httpserver.port}/admin"
    assert app.test_client().post(SERVICE_URL, json=request(sneaky)).status_code == 412
    assert httpserver.log == []


def test_unicode_lookalike_host_is_refused(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A host with a Cyrillic 'о' in 'localhost' is another name once IDNA-encoded: refused, never contacted."""
    app = prefix_app(make_app, httpserver)
    lookalike = f"http://l\u043ecalhost:{httpserver.port}/fhir"
    assert app.test_client().post(SERVICE_URL, json=request(lookalike)).status_code == 412
    assert httpserver.log == []


EQUIVALENT_FORMS = {
    "upper-case scheme and host, trailing slash": "HTTP://LOCALHOST:{port}/fhir/",
    "dot and double-slash segments": "http://localhost:{port}//fhir/./",
    "encoded unreserved characters": "http://localhost:{port}/%66hir",
    "a trailing dot on the host": "http://localhost.:{port}/fhir",
    "full-width unicode host (IDNA maps it to localhost)": "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{port}/fhir",
}


@pytest.mark.parametrize("form", EQUIVALENT_FORMS.values(), ids=EQUIVALENT_FORMS.keys())
def test_equivalent_forms_of_an_allowed_server_are_normalised(
    make_app: AppFactory, httpserver: HTTPServer, form: str
) -> None:
    """A fhirServer written differently but naming the allowed base is accepted, and the request goes to the
    normalised URL (/fhir/Condition), with the token."""
    app = prefix_app(make_app, httpserver)
    httpserver.expect_request("/fhir/Condition").respond_with_json(searchset())
    fhir_server = form.format(port=httpserver.port)
    assert app.test_client().post(SERVICE_URL, json=request(fhir_server)).status_code == 200
    ((sent, _),) = httpserver.log
    assert (sent.path, sent.headers["Authorization"]) == ("/fhir/Condition", f"Bearer {TOKEN}")


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("https://fhir.example.org:443/r4/", "https://fhir.example.org/r4"),
        ("http://fhir.example.org:80/r4", "http://fhir.example.org/r4"),
        ("https://FHIR.Example.ORG/r4", "https://fhir.example.org/r4"),
        ("https://b\u00fccher.example/r4", "https://xn--bcher-kva.example/r4"),
        ("http://[0:0:0:0:0:0:0:1]:8080/r4", "http://[::1]:8080/r4"),
    ],
)
def test_policy_normalises_default_ports_case_idna_and_ipv6(written: str, normalised: str) -> None:
    """Default ports are dropped, scheme and host lower-cased, unicode hosts IDNA-encoded, IPv6 compressed: an
    allowlist entry written one way admits the same server written another."""
    policy = ServerPolicy((normalised,), allow_http=True)
    assert policy.check(written) == normalised


def test_prefix_entry_admits_whole_segments_only(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """'…/fhir/*' does not admit '…/fhir-admin': the prefix ends at a segment boundary."""
    app = prefix_app(make_app, httpserver)
    assert app.test_client().post(SERVICE_URL, json=request(httpserver.url_for("/fhir-admin"))).status_code == 412
    assert httpserver.log == []


REDIRECTS_OUTSIDE = {
    "absolute, same origin": "http://localhost:{port}/admin/Condition",
    "absolute path": "/admin/Condition",
    "relative with dot segments": "../admin/Condition",
    "through the base with encoded dots": "/fhir/%2e%2e/admin/Condition",
}


@pytest.mark.parametrize("location", REDIRECTS_OUTSIDE.values(), ids=REDIRECTS_OUTSIDE.keys())
def test_same_origin_redirect_outside_the_base_is_not_followed(
    make_app: AppFactory, httpserver: HTTPServer, location: str
) -> None:
    """A redirect on the same origin but outside the fhirServer's base path is refused (412): /admin is never
    requested, so the token never goes there."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    admin_is_served(httpserver)
    httpserver.expect_request("/fhir/Condition").respond_with_data(
        "", status=302, headers={"Location": location.format(port=httpserver.port)}
    )
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 412
    assert paths(httpserver) == ["/fhir/Condition"]


def test_redirect_to_a_sibling_under_the_allowlist_prefix_is_not_followed(
    make_app: AppFactory, httpserver: HTTPServer
) -> None:
    """With '…/fhir/*' allowed and fhirServer '…/fhir/tenant-a', a redirect to '…/fhir/tenant-b' is refused: the
    base is the fhirServer the call was allowed for, not the allowlist prefix."""
    app = prefix_app(make_app, httpserver)
    httpserver.expect_request("/fhir/tenant-a/Condition").respond_with_data(
        "", status=307, headers={"Location": httpserver.url_for("/fhir/tenant-b/Condition")}
    )
    httpserver.expect_request("/fhir/tenant-b/Condition").respond_with_json(searchset())
    response = app.test_client().post(SERVICE_URL, json=request(httpserver.url_for("/fhir/tenant-a")))
    assert response.status_code == 412
    assert paths(httpserver) == ["/fhir/tenant-a/Condition"]


def test_same_base_redirect_keeps_the_token(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A redirect under the base is followed, and the token goes with it (the server still is the allowed one)."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    httpserver.expect_request("/fhir/Condition").respond_with_data(
        "", status=307, headers={"Location": "/fhir/moved/Condition?patient=" + PID}
    )
    httpserver.expect_request("/fhir/moved/Condition").respond_with_json(searchset())
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 200
    assert [(r.path, r.headers.get("Authorization")) for r, _ in httpserver.log] == [
        ("/fhir/Condition", f"Bearer {TOKEN}"),
        ("/fhir/moved/Condition", f"Bearer {TOKEN}"),
    ]


NEXT_LINKS_OUTSIDE = {
    "same origin, another path": "http://localhost:{port}/admin?page=2",
    "absolute path": "/admin?page=2",
    "dot segments through the base": "http://localhost:{port}/fhir/../admin?page=2",
    "encoded dots through the base": "/fhir/%2E%2E/admin?page=2",
    "a sibling of the base": "http://localhost:{port}/fhir-admin?page=2",
}


@pytest.mark.parametrize("link", NEXT_LINKS_OUTSIDE.values(), ids=NEXT_LINKS_OUTSIDE.keys())
def test_prefetched_next_link_outside_the_base_is_not_followed(
    make_app: AppFactory, httpserver: HTTPServer, link: str
) -> None:
    """A prefetched Bundle whose next link leaves the fhirServer's base path (same origin) gets 412 and no request
    at all."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    admin_is_served(httpserver)
    paged = searchset() | {"link": [{"relation": "next", "url": link.format(port=httpserver.port)}]}
    assert app.test_client().post(SERVICE_URL, json=request(base, conditions=paged)).status_code == 412
    assert httpserver.log == []


def test_fetched_next_link_outside_the_base_is_not_followed(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A fetched search whose next link leaves the base path is refused after the first page: /admin never hit."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    admin_is_served(httpserver)
    first = searchset() | {"link": [{"relation": "next", "url": httpserver.url_for("/admin/Condition?page=2")}]}
    httpserver.expect_request("/fhir/Condition").respond_with_json(first)
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 412
    assert paths(httpserver) == ["/fhir/Condition"]


def test_the_token_is_never_sent_outside_the_base(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """Page 2 (under the base) redirects to /admin: page 1 and 2 get the token, the redirect is refused, and no
    request carrying the token — none at all — reaches a path outside /fhir."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    admin_is_served(httpserver)
    first = searchset() | {"link": [{"relation": "next", "url": base + "/Condition?page=2"}]}
    httpserver.expect_request("/fhir/Condition", query_string={"patient": PID}).respond_with_json(first)
    httpserver.expect_request("/fhir/Condition", query_string={"page": "2"}).respond_with_data(
        "", status=302, headers={"Location": "/admin/Condition"}
    )
    assert app.test_client().post(SERVICE_URL, json=request(base)).status_code == 412
    sent = [(r.path, r.headers.get("Authorization")) for r, _ in httpserver.log]
    assert sent == [("/fhir/Condition", f"Bearer {TOKEN}"), ("/fhir/Condition", f"Bearer {TOKEN}")]


def test_legitimate_paging_under_the_base_still_works(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """Next links under the base — relative, absolute, and HAPI's '<base>?_getpages=' form — are followed with the
    token, and every page's resources are used."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    page1 = searchset() | {"link": [{"relation": "next", "url": "Condition?patient=" + PID + "&_page=2"}]}
    page2 = searchset() | {"link": [{"relation": "next", "url": base + "?_getpages=abc&_getpagesoffset=2"}]}
    page3 = searchset(condition("M33.00"))
    httpserver.expect_request("/fhir/Condition", query_string={"patient": PID}).respond_with_json(page1)
    httpserver.expect_request("/fhir/Condition", query_string={"patient": PID, "_page": "2"}).respond_with_json(page2)
    httpserver.expect_request("/fhir", query_string={"_getpages": "abc", "_getpagesoffset": "2"}).respond_with_json(
        page3
    )
    response = app.test_client().post(SERVICE_URL, json=request(base))
    assert response.status_code == 200
    assert response.get_json()["cards"]
    assert [(r.path, r.headers.get("Authorization")) for r, _ in httpserver.log] == [
        ("/fhir/Condition", f"Bearer {TOKEN}"),
        ("/fhir/Condition", f"Bearer {TOKEN}"),
        ("/fhir", f"Bearer {TOKEN}"),
    ]


def test_refusal_is_a_clear_operation_outcome(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """The 412 names the key and says why (outside the fhirServer's base path), without echoing the link."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    paged = searchset() | {"link": [{"relation": "next", "url": "/admin/secret-place?page=2"}]}
    outcome = app.test_client().post(SERVICE_URL, json=request(base, conditions=paged)).get_json(force=True)
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert "prefetch 'conditions'" in issue["diagnostics"]
    assert "outside the fhirServer's base path" in issue["diagnostics"]
    assert "secret-place" not in str(outcome)


def test_refusal_is_counted_and_logged_with_its_reason(
    make_app: AppFactory, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused next link adds one to nxp2_cds_fhir_refused_total{reason="next-outside-base"} and logs
    fhir_url_refused with that reason and where (and not the URL)."""
    base = httpserver.url_for("/fhir")
    app = make_app(fhir={"allowed_servers": [base], "allow_http": True})
    paged = searchset() | {"link": [{"relation": "next", "url": "/admin/secret-place?page=2"}]}
    labels = {"reason": "next-outside-base"}
    registry = runtime_of(app).metrics.registry
    before = registry.get_sample_value("nxp2_cds_fhir_refused_total", labels) or 0.0
    capsys.readouterr()
    assert app.test_client().post(SERVICE_URL, json=request(base, conditions=paged)).status_code == 412
    assert registry.get_sample_value("nxp2_cds_fhir_refused_total", labels) == before + 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in (captured.err + captured.out).splitlines() if line.startswith("{")]
    (refusal,) = [line for line in lines if line["event"] == "fhir_url_refused"]
    assert (refusal["reason"], refusal["where"], refusal["level"]) == ("next-outside-base", "next", "warning")
    assert "secret-place" not in captured.err + captured.out
