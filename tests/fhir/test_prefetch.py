"""Prefetch states and the FHIR-server fallback, against pytest-httpserver: the exact requests sent, and
every fault injected (errors, timeouts, invalid JSON, paging)."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.builders import LOCAL, PID, assert_valid_cds, condition, hook_request, obs, patient, qty, searchset
from tests.http_support import SERVICE_URL, AppFactory, runtime_of
from tests.synthetic_patients import nxp2_positive

TOKEN = "secret-access-token"
BASE_PATH = "/fhir"

PATIENT = patient()
OBSERVATIONS = [nxp2_positive(), obs("2276-4", **qty(400, "ng/mL"))]
CONDITIONS = [condition("M33.00"), condition("R60.0")]


def fhir_app(make_app: AppFactory, httpserver: HTTPServer, **fhir: Any) -> Flask:
    """An app allowed to call the test FHIR server over http, with short timeouts. The site has mapped its
    anti-NXP2 code, so the templates are the three coded ones (the ``laboratory`` template, used while anti-NXP2
    has no site code, is tested in tests/integration/test_name_only_nxp2_real_fhir.py)."""
    settings = {
        "allowed_servers": [httpserver.url_for(BASE_PATH)],
        "allow_http": True,
        "request_timeout_seconds": 0.5,
        "deadline_seconds": 2.0,
    } | fhir
    return make_app(fhir=settings, mappings={"local_codes": {"anti_nxp2_positive": [f"{LOCAL}|MYO-NXP2"]}})


def request_without(
    keys: tuple[str, ...], httpserver: HTTPServer, *, token: str | None = TOKEN, replace: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A hook request whose prefetch lacks ``keys`` (``replace`` puts other values in), with fhirServer."""
    document = hook_request([PATIENT, *OBSERVATIONS, *CONDITIONS])
    for key in keys:
        del document["prefetch"][key]
    document["prefetch"].update(replace or {})
    document["fhirServer"] = httpserver.url_for(BASE_PATH)
    if token:
        document["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "patient/*.read",
            "subject": "nxp2-cds",
            "patient": PID,
        }
    return document


def template_request(app: Flask, key: str) -> tuple[str, dict[str, str]]:
    """Path and query of the rendered template for ``key``."""
    rendered = runtime_of(app).templates[key].replace("{{context.patientId}}", PID)
    parts = urlsplit(rendered)
    return f"{BASE_PATH}/{parts.path}", {k: v[0] for k, v in parse_qs(parts.query).items()}


def batch_response(*resources: dict[str, Any], status: str = "200 OK") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": r, "response": {"status": status}} for r in resources],
    }


OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}


def tiers(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_valid_cds("serviceResponse", response.get_json())
    return [c["indicator"] for c in response.get_json()["cards"]]


def issue_keys(response: Any) -> list[str]:
    assert response.status_code == 412, response.get_data(as_text=True)
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    return sorted(e for issue in body["issue"] for e in issue.get("expression", []))


# -- prefetch states -----------------------------------------------------------------------------------


def test_given_prefetch_makes_no_request(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """When every key is given, the FHIR server is not called, even if fhirServer is present."""
    client = fhir_app(make_app, httpserver).test_client()
    assert tiers(client.post(SERVICE_URL, json=request_without((), httpserver))) == ["warning", "warning"]
    assert httpserver.log == []


def test_null_prefetch_means_no_data(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """null keys mean the client has no data: nothing is fetched, and without a patient no card is given."""
    client = fhir_app(make_app, httpserver).test_client()
    document = request_without((), httpserver, replace={"patient": None, "observations": None, "conditions": None})
    assert tiers(client.post(SERVICE_URL, json=document)) == []
    assert httpserver.log == []


def test_absent_prefetch_is_fetched_in_one_batch(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """With no prefetch object, all three templates go to the FHIR server in one batch with the bearer token."""
    app = fhir_app(make_app, httpserver)
    httpserver.expect_oneshot_request(
        BASE_PATH, method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json(batch_response(PATIENT, searchset(*OBSERVATIONS), searchset(*CONDITIONS)))
    document = request_without(("patient", "observations", "conditions"), httpserver)
    del document["prefetch"]
    assert tiers(app.test_client().post(SERVICE_URL, json=document)) == ["warning", "warning"]
    ((request, _),) = httpserver.log
    urls = [e["request"]["url"] for e in json.loads(request.get_data())["entry"]]
    templates = runtime_of(app).templates
    assert urls == [
        templates[k].replace("{{context.patientId}}", PID) for k in ("patient", "observations", "conditions")
    ]
    assert all(e["request"]["method"] == "GET" for e in json.loads(request.get_data())["entry"])


def test_operation_outcome_key_is_fetched_alone(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A key holding the client's OperationOutcome is fetched with one GET of its template."""
    app = fhir_app(make_app, httpserver)
    path, query = template_request(app, "observations")
    httpserver.expect_oneshot_request(
        path, method="GET", query_string=query, headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_json(searchset(*OBSERVATIONS))
    document = request_without((), httpserver, replace={"observations": OUTCOME})
    assert tiers(app.test_client().post(SERVICE_URL, json=document)) == ["warning", "warning"]
    httpserver.check_assertions()
    assert len(httpserver.log) == 1


def test_absent_key_is_fetched(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """One absent key is fetched with one GET of its template."""
    app = fhir_app(make_app, httpserver)
    path, query = template_request(app, "conditions")
    httpserver.expect_oneshot_request(path, method="GET", query_string=query).respond_with_json(searchset(*CONDITIONS))
    response = app.test_client().post(SERVICE_URL, json=request_without(("conditions",), httpserver))
    assert tiers(response) == ["warning", "warning"]
    httpserver.check_assertions()


def test_no_token_no_authorization_header(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """Without fhirAuthorization the service calls an open FHIR server without an Authorization header."""
    app = fhir_app(make_app, httpserver)
    path, _query = template_request(app, "patient")
    httpserver.expect_oneshot_request(path, method="GET").respond_with_json(PATIENT)
    response = app.test_client().post(SERVICE_URL, json=request_without(("patient",), httpserver, token=None))
    assert tiers(response) == ["warning", "warning"]
    ((request, _),) = httpserver.log
    assert "Authorization" not in request.headers


def test_batch_refused_falls_back_to_parallel_gets(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A server that refuses batch (405) gets one GET per missing key, with the token."""
    app = fhir_app(make_app, httpserver)
    httpserver.expect_oneshot_request(BASE_PATH, method="POST").respond_with_json(OUTCOME, status=405)
    answers = {"patient": PATIENT, "observations": searchset(*OBSERVATIONS), "conditions": searchset(*CONDITIONS)}
    for key, answer in answers.items():
        path, query = template_request(app, key)
        httpserver.expect_oneshot_request(
            path, method="GET", query_string=query or None, headers={"Authorization": f"Bearer {TOKEN}"}
        ).respond_with_json(answer)
    document = request_without(("patient", "observations", "conditions"), httpserver)
    assert tiers(app.test_client().post(SERVICE_URL, json=document)) == ["warning", "warning"]
    httpserver.check_assertions()
    assert len(httpserver.log) == 4


def test_paged_prefetch_bundle_is_followed(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A prefetched Bundle with a next link is completed from the FHIR server; the later page's data counts."""
    app = fhir_app(make_app, httpserver)
    first = searchset(OBSERVATIONS[0]) | {"link": [{"relation": "next", "url": httpserver.url_for("/fhir/page2")}]}
    httpserver.expect_oneshot_request("/fhir/page2", method="GET").respond_with_json(searchset(OBSERVATIONS[1]))
    document = request_without((), httpserver, replace={"observations": first})
    assert tiers(app.test_client().post(SERVICE_URL, json=document)) == ["warning", "warning"]
    httpserver.check_assertions()


def test_fetched_search_is_paged(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A fetched search result with a relative next link is followed on the same server."""
    app = fhir_app(make_app, httpserver)
    path, query = template_request(app, "observations")
    first = searchset(OBSERVATIONS[0]) | {"link": [{"relation": "next", "url": "Observation?page=2"}]}
    httpserver.expect_oneshot_request(path, method="GET", query_string=query).respond_with_json(first)
    httpserver.expect_oneshot_request("/fhir/Observation", query_string={"page": "2"}).respond_with_json(
        searchset(OBSERVATIONS[1])
    )
    response = app.test_client().post(SERVICE_URL, json=request_without(("observations",), httpserver))
    assert tiers(response) == ["warning", "warning"]
    httpserver.check_assertions()


# -- faults --------------------------------------------------------------------------------------------

ALL_KEYS = ["prefetch.conditions", "prefetch.observations", "prefetch.patient"]


@pytest.mark.parametrize("status", [500, 401, 403, 503])
def test_fhir_server_error_is_412(make_app: AppFactory, httpserver: HTTPServer, status: int) -> None:
    """An error status from the FHIR server gives 412 naming every key that was being fetched."""
    app = fhir_app(make_app, httpserver)
    httpserver.expect_request(BASE_PATH, method="POST").respond_with_json(OUTCOME, status=status)
    httpserver.expect_request(f"{BASE_PATH}/Patient/{PID}").respond_with_json(OUTCOME, status=status)
    document = request_without(("patient", "observations", "conditions"), httpserver)
    assert issue_keys(app.test_client().post(SERVICE_URL, json=document)) == ALL_KEYS


def settle(httpserver: HTTPServer, requests: int) -> None:
    """Wait until the server has finished the requests the service gave up on, so none leaks into another test."""
    deadline = time.monotonic() + 5
    while len(httpserver.log) < requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(httpserver.log) == requests


def _sleepy(seconds: float, body: dict[str, Any]) -> Any:
    def handler(_: Request) -> Response:
        time.sleep(seconds)
        return Response(json.dumps(body), content_type="application/fhir+json")

    return handler


def test_fhir_server_timeout_is_412(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A FHIR server slower than the request timeout gives 412."""
    app = fhir_app(make_app, httpserver, request_timeout_seconds=0.2)
    path, _ = template_request(app, "conditions")
    httpserver.expect_request(path).respond_with_handler(_sleepy(0.6, searchset(*CONDITIONS)))
    response = app.test_client().post(SERVICE_URL, json=request_without(("conditions",), httpserver))
    assert issue_keys(response) == ["prefetch.conditions"]
    settle(httpserver, 1)


def test_invalid_json_from_fhir_server_is_412(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A FHIR server answering something that is not JSON gives 412."""
    app = fhir_app(make_app, httpserver)
    path, _ = template_request(app, "conditions")
    httpserver.expect_request(path).respond_with_data("<html>oops</html>", content_type="text/html")
    response = app.test_client().post(SERVICE_URL, json=request_without(("conditions",), httpserver))
    assert issue_keys(response) == ["prefetch.conditions"]


def test_slow_paging_runs_out_of_the_deadline(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """Pages that keep the service past its overall deadline give 412 (each page within its own timeout)."""
    app = fhir_app(make_app, httpserver, request_timeout_seconds=0.4, deadline_seconds=0.7)
    path, query = template_request(app, "observations")
    page = searchset(OBSERVATIONS[0]) | {"link": [{"relation": "next", "url": "Observation?page=next"}]}
    httpserver.expect_request(path, query_string=query).respond_with_handler(_sleepy(0.3, page))
    httpserver.expect_request("/fhir/Observation", query_string={"page": "next"}).respond_with_handler(
        _sleepy(0.3, page)
    )
    response = app.test_client().post(SERVICE_URL, json=request_without(("observations",), httpserver))
    assert issue_keys(response) == ["prefetch.observations"]
    settle(httpserver, 3)


def test_too_many_pages_is_412(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """More pages than max_pages give 412 rather than partial data."""
    app = fhir_app(make_app, httpserver, max_pages=2)
    endless = searchset(OBSERVATIONS[0]) | {"link": [{"relation": "next", "url": "Observation?page=again"}]}
    path, query = template_request(app, "observations")
    httpserver.expect_request(path, query_string=query).respond_with_json(endless)
    httpserver.expect_request("/fhir/Observation", query_string={"page": "again"}).respond_with_json(endless)
    response = app.test_client().post(SERVICE_URL, json=request_without(("observations",), httpserver))
    assert issue_keys(response) == ["prefetch.observations"]
    assert len(httpserver.log) == 2


def test_missing_data_without_fhir_server_is_412(make_app: AppFactory) -> None:
    """A missing key and no fhirServer gives 412 naming the key."""
    document = hook_request([PATIENT, *OBSERVATIONS])
    del document["prefetch"]["conditions"]
    assert issue_keys(make_app().test_client().post(SERVICE_URL, json=document)) == ["prefetch.conditions"]


def test_no_prefetch_and_no_fhir_server_is_412(make_app: AppFactory) -> None:
    """No prefetch object and no fhirServer gives 412 naming every key (with no site code for anti-NXP2, the
    laboratory template too)."""
    document = hook_request([PATIENT])
    del document["prefetch"]
    response = make_app().test_client().post(SERVICE_URL, json=document)
    assert issue_keys(response) == sorted([*ALL_KEYS, "prefetch.laboratory"])


def test_batch_response_not_matching_the_batch_is_412(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A batch-response with the wrong number of entries gives 412."""
    app = fhir_app(make_app, httpserver)
    httpserver.expect_request(BASE_PATH, method="POST").respond_with_json(batch_response(PATIENT))
    document = request_without(("patient", "observations"), httpserver)
    assert issue_keys(app.test_client().post(SERVICE_URL, json=document)) == [
        "prefetch.observations",
        "prefetch.patient",
    ]


def test_batch_entry_error_is_412(make_app: AppFactory, httpserver: HTTPServer) -> None:
    """A batch entry that failed (the Patient is not found) gives 412."""
    app = fhir_app(make_app, httpserver)
    httpserver.expect_request(BASE_PATH, method="POST").respond_with_json(
        {
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [
                {"response": {"status": "404 Not Found"}},
                {"resource": searchset(), "response": {"status": "200 OK"}},
            ],
        }
    )
    document = request_without(("patient", "observations"), httpserver)
    assert issue_keys(app.test_client().post(SERVICE_URL, json=document)) == [
        "prefetch.observations",
        "prefetch.patient",
    ]
