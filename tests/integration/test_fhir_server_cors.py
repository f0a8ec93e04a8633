"""CORS on the FHIR test server, so that a browser client on another origin (the CDS Hooks Sandbox) can use it.

Real HTTP requests against the started server, then a real browser (headless Chromium) on a page of another origin
that reads and writes through it, its preflight included.
"""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from tests.browser import browser_or_skip, chromium, serve
from tests.fhir_server.launcher import FhirTestServer

ORIGIN = "http://127.0.0.1:8000"
TIMEOUT = 30


def _tokens(value: str | None) -> set[str]:
    """A comma-separated header value as a set of lower-case names."""
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


def _preflight(url: str, method: str = "POST", headers: str = "authorization, content-type", **extra: str) -> Any:
    request_headers = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers, **extra}
    return requests.options(url, headers=request_headers, timeout=TIMEOUT)


def test_preflight_is_answered_204_with_what_a_browser_needs(fhir_server: FhirTestServer, fhir_base: str) -> None:
    """OPTIONS with Access-Control-Request-Method/Headers: 204, the Origin allowed, the methods, the headers
    (Authorization, Content-Type, Accept) and the exposed response headers (Location, ETag); no body."""
    response = _preflight(f"{fhir_base}/Patient", Origin=ORIGIN)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "origin" in _tokens(response.headers.get("Vary"))
    assert _tokens(response.headers["Access-Control-Allow-Methods"]) >= {"get", "post", "put", "options"}
    assert _tokens(response.headers["Access-Control-Allow-Headers"]) >= {"authorization", "content-type", "accept"}
    assert _tokens(response.headers["Access-Control-Expose-Headers"]) >= {"location", "etag"}
    assert int(response.headers["Access-Control-Max-Age"]) > 0


def test_preflight_is_neither_counted_nor_routed(fhir_server: FhirTestServer, fhir_base: str) -> None:
    """A preflight is not a FHIR interaction: the request counter stays at zero, on any path (the base, a search,
    an unknown type) and for PUT as well."""
    for path in ("", "/Observation/_search", "/NoSuchType/1"):
        assert _preflight(f"{fhir_base}{path}", Origin=ORIGIN).status_code == 204
    assert _preflight(f"{fhir_base}/Patient/p1", method="PUT", Origin=ORIGIN).status_code == 204
    assert fhir_server.stats()["requests"] == 0


def test_preflight_without_origin_allows_any(fhir_base: str) -> None:
    """No Origin header (a tool, not a browser): Allow-Origin is *."""
    response = _preflight(f"{fhir_base}/Patient")
    assert (response.status_code, response.headers["Access-Control-Allow-Origin"]) == (204, "*")


def test_every_normal_response_allows_the_origin(fhir_base: str) -> None:
    """Reads, searches (GET and the form-encoded POST _search the sandbox prefers), creates and errors all carry
    Access-Control-Allow-Origin; a create exposes its Location and ETag to scripts."""
    headers = {"Origin": ORIGIN, "Accept": "application/fhir+json"}
    created = requests.post(
        f"{fhir_base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Cors"}]},
        headers={**headers, "Content-Type": "application/fhir+json"},
        timeout=TIMEOUT,
    )
    assert created.status_code == 201, created.text
    assert created.headers["Location"].startswith(f"{fhir_base}/Patient/")
    assert created.headers["ETag"].startswith('W/"')
    patient_id = created.json()["id"]
    responses = {
        "create": created,
        "metadata": requests.get(f"{fhir_base}/metadata", headers=headers, timeout=TIMEOUT),
        "read": requests.get(f"{fhir_base}/Patient/{patient_id}", headers=headers, timeout=TIMEOUT),
        "search": requests.get(f"{fhir_base}/Patient", params={"_id": patient_id}, headers=headers, timeout=TIMEOUT),
        "post-search": requests.post(
            f"{fhir_base}/Patient/_search",
            data={"_id": patient_id},
            headers={**headers, "Accept": "application/json+fhir"},  # as the sandbox sends it
            timeout=TIMEOUT,
        ),
        "not-found": requests.get(f"{fhir_base}/Patient/no-such-id", headers=headers, timeout=TIMEOUT),
        "bad-request": requests.get(f"{fhir_base}/NoSuchType", headers=headers, timeout=TIMEOUT),
    }
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "create": 201,
        "metadata": 200,
        "read": 200,
        "search": 200,
        "post-search": 200,
        "not-found": 404,
        "bad-request": 400,
    }
    for name, response in responses.items():
        assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN, name
        assert _tokens(response.headers.get("Access-Control-Expose-Headers")) >= {"location", "etag"}, name
    assert responses["post-search"].json()["total"] == 1
    anonymous = requests.get(f"{fhir_base}/metadata", timeout=TIMEOUT)
    assert anonymous.headers["Access-Control-Allow-Origin"] == "*"


# Runs in the page (another origin): a create with Authorization and a FHIR content type (so the browser must
# preflight), a read of what it created, the sandbox's form-encoded POST _search; returns what scripts could see.
BROWSER_SCRIPT = """
const base = arguments[0];
const done = arguments[arguments.length - 1];
(async () => {
  const auth = { Authorization: 'Bearer not-checked', Accept: 'application/fhir+json' };
  const created = await fetch(`${base}/Patient`, {
    method: 'POST',
    headers: { ...auth, 'Content-Type': 'application/fhir+json' },
    body: JSON.stringify({ resourceType: 'Patient', name: [{ family: 'FromTheBrowser' }] }),
  });
  const patient = await created.json();
  const read = await fetch(`${base}/Patient/${patient.id}`, { headers: auth });
  const search = await fetch(`${base}/Patient/_search`, {
    method: 'POST',
    headers: { Accept: 'application/json+fhir', 'Content-Type': 'application/x-www-form-urlencoded' },
    body: `_id=${encodeURIComponent(patient.id)}`,
  });
  return {
    origin: window.location.origin,
    created: created.status,
    location: created.headers.get('Location'),
    etag: created.headers.get('ETag'),
    read: read.status,
    family: (await read.json()).name[0].family,
    searchTotal: (await search.json()).total,
  };
})().then(done, (error) => done({ error: String(error) }));
"""


def test_a_browser_on_another_origin_reads_and_writes(fhir_server: FhirTestServer, fhir_base: str) -> None:
    """Headless Chromium, on a page served from another origin, creates, reads and searches through the server
    with an Authorization header; it preflights the create, and scripts see Location and ETag."""
    browser_or_skip()
    page = Flask("cors-page")
    page.add_url_rule("/", "index", lambda: "<!doctype html><title>another origin</title><p>page</p>")
    with serve(page) as page_url, chromium(800, 600) as driver:
        driver.set_script_timeout(TIMEOUT)
        driver.get(page_url + "/")
        result = driver.execute_async_script(BROWSER_SCRIPT, fhir_base)
    assert "error" not in result, result
    assert result["origin"] == page_url != fhir_server.admin_url
    assert (result["created"], result["read"], result["family"], result["searchTotal"]) == (
        201,
        200,
        "FromTheBrowser",
        1,
    )
    assert result["location"].startswith(f"{fhir_base}/Patient/")
    assert result["etag"].startswith('W/"')
    preflights = [line for line in fhir_server.stderr_tail if line.startswith("OPTIONS /fhir/Patient 204")]
    assert preflights, "the browser sent no preflight: the test did not exercise CORS"
    assert fhir_server.stats()["requests"] == 3  # create, read, search; the preflight is not counted
