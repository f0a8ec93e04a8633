"""The integration-team kit on the command line: ``keys generate``, ``call``, ``demo load``.

``nxp2-cds call`` behaves like a CDS client (an EHR): it reads discovery, builds a patient-view request with
prefetch (from a Bundle file or from a FHIR server) or with ``fhirServer`` for the service to fetch, signs a client
JWT per CDS Hooks 2.0, posts it, checks the answer against the CDS Hooks schema and shows the cards.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urljoin

import click
import requests

from cds_service.cli.common import FAILED, fail
from cds_service.kit.client_tokens import ClientKey
from cds_service.kit.examples import (
    as_of_now,
    example_bundle,
    example_index,
    patient_of,
    prefetch_from_bundle,
    render_cards,
    resolve_references,
    schema_problems,
)

DEFAULT_ISSUER = "https://nxp2-cds-kit.example.org/client"
FHIR_JSON = "application/fhir+json"


# -- keys ----------------------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Signing keys for a test CDS client."""


@keys.command("generate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--alg", type=click.Choice(["ES384", "RS384"]), default="ES384", show_default=True)
@click.option("--iss", default=DEFAULT_ISSUER, show_default=True, help="The client's issuer (the JWT iss claim).")
@click.option("--kid", default=None, help="Key id (default: random).")
def generate(directory: Path, alg: str, iss: str, kid: str | None) -> None:
    """Write a key pair for a test CDS client into DIRECTORY: private-key.pem (mode 600), jwks.json (the public
    key, for the service to trust) and client.json (kid, alg, iss)."""
    if (directory / "private-key.pem").exists():
        fail(f"{directory}: already holds a key; choose another directory", 2)
    key = ClientKey.generate("ES384" if alg == "ES384" else "RS384", kid)
    key.save(directory, issuer=iss)
    click.echo(f"wrote {directory / 'private-key.pem'}, {directory / 'jwks.json'}, {directory / 'client.json'}")
    click.echo("\nTrust it in the service's configuration:\n")
    click.echo(f'[[auth.issuers]]\niss = "{iss}"\njwks_file = "{(directory / "jwks.json").resolve()}"')


# -- call ----------------------------------------------------------------------------------------------------


class _Client:
    """Signs one fresh JWT per request (new jti), for the exact URL being called."""

    def __init__(self, keys_dir: Path | None, iss: str | None, audience_base: str | None, timeout: float) -> None:
        self.key: ClientKey | None = None
        self.iss = iss
        if keys_dir is not None:
            try:
                self.key, saved_iss = ClientKey.load(keys_dir)
            except (OSError, ValueError, KeyError) as exc:
                fail(f"{keys_dir}: not a key directory from `nxp2-cds keys generate` ({exc})", 2)
            self.iss = iss or saved_iss or DEFAULT_ISSUER
        self.audience_base = audience_base.rstrip("/") if audience_base else None
        self.timeout = timeout
        self.session = requests.Session()

    def headers(self, url: str) -> dict[str, str]:
        if self.key is None or self.iss is None:
            return {}
        audience = url
        if self.audience_base:
            audience = self.audience_base + "/cds-services" + url.split("/cds-services", 1)[1]
        return {"Authorization": f"Bearer {self.key.token(iss=self.iss, aud=audience)}"}

    def send(self, method: str, url: str, body: Any = None) -> requests.Response:
        try:
            return self.session.request(
                method, url, json=body, headers=self.headers(url) | {"Accept": "application/json"}, timeout=self.timeout
            )
        except requests.ConnectionError:
            fail(f"cannot reach {url}: is the service running (`nxp2-cds serve`) and the URL right?", FAILED)
        except requests.Timeout:
            fail(f"{url} did not answer within {self.timeout:g} s", FAILED)


def _explain(response: requests.Response, what: str, signed: bool) -> NoReturn:
    status = response.status_code
    details = ""
    try:
        body = response.json()
        details = "; ".join(i.get("diagnostics", "") for i in body.get("issue", []) if i.get("diagnostics"))
    except ValueError:
        pass
    if status == 401 and not signed:
        fail(
            f"{what}: 401 - the service requires a client JWT: pass --keys DIR (from `nxp2-cds keys generate`)", FAILED
        )
    if status == 401:
        fail(
            f"{what}: 401 - the service refused the client JWT: does it trust this key's jwks.json and issuer, "
            "and is the URL the audience it expects (public_base_url; see --audience-base)?",
            FAILED,
        )
    if status == 412:
        fail(f"{what}: 412 - the service could not obtain the patient's data: {details or 'no detail'}", FAILED)
    fail(f"{what}: HTTP {status}{f' - {details}' if details else ''}", FAILED)


def _fhir_get(session: requests.Session, url: str, token: str | None, timeout: float) -> dict[str, Any] | None:
    headers = {"Accept": FHIR_JSON} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        response = session.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        fail(f"cannot read {url} from the FHIR server: {type(exc).__name__}", FAILED)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        fail(f"the FHIR server answered {response.status_code} for {url}", FAILED)
    document: dict[str, Any] = response.json()
    return document


def _prefetch_from_server(
    templates: dict[str, str], fhir_server: str, patient: str, token: str | None, timeout: float
) -> dict[str, Any]:
    """Run each discovery template against the FHIR server, following next links (what an EHR's prefetch does)."""
    session = requests.Session()
    base = fhir_server.rstrip("/") + "/"
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        first = _fhir_get(session, urljoin(base, template.replace("{{context.patientId}}", patient)), token, timeout)
        current = first
        for _ in range(20):
            link = next((li["url"] for li in (current or {}).get("link", []) if li.get("relation") == "next"), None)
            if first is None or link is None:
                break
            current = _fhir_get(session, urljoin(base, link), token, timeout)
            first.setdefault("entry", []).extend((current or {}).get("entry", []))
        if first is not None:
            first.pop("link", None)
        prefetch[key] = first
    return prefetch


@click.command()
@click.argument("service_url")
@click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A FHIR Bundle with the patient's data, sent as prefetch.",
)
@click.option("--fhir-server", help="A FHIR R4 server holding the patient.")
@click.option("--patient", help="The patient id (default with --bundle: the Bundle's Patient).")
@click.option(
    "--prefetch/--no-prefetch",
    default=True,
    show_default=True,
    help="With --fhir-server: prefetch client-side from the discovery templates, or send fhirServer only "
    "so the service fetches.",
)
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Key directory from `nxp2-cds keys generate` (no Authorization header without it).",
)
@click.option("--iss", help="Issuer for the JWT (default: the one saved with the key).")
@click.option(
    "--audience-base",
    help="The service's public base URL, when the JWT audience differs from the URL called (a proxy in between).",
)
@click.option("--fhir-token", help="An access token the service may use on the FHIR server (fhirAuthorization).")
@click.option("--user", default="Practitioner/nxp2-cds-kit", show_default=True, help="context.userId")
@click.option(
    "--as-of/--keep-dates",
    default=True,
    show_default=True,
    help="With --bundle: move the example's dates so its 'as of' moment is now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the CDS Hooks response as JSON.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for each answer.")
def call(
    service_url: str,
    bundle_file: Path | None,
    fhir_server: str | None,
    patient: str | None,
    prefetch: bool,
    keys_dir: Path | None,
    iss: str | None,
    audience_base: str | None,
    fhir_token: str | None,
    user: str,
    as_of: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Act as a CDS client: fire patient-view at SERVICE_URL (…/cds-services/<id>) and show the cards."""
    if (bundle_file is None) == (fhir_server is None):
        fail("give either --bundle FILE or --fhir-server URL (with --patient)", 2)
    if "/cds-services/" not in service_url:
        fail("SERVICE_URL must look like http://host:port/cds-services/<service id>", 2)
    base, service_id = service_url.rstrip("/").rsplit("/", 1)
    client = _Client(keys_dir, iss, audience_base, timeout)

    answer = client.send("GET", base)
    if answer.status_code != 200:
        _explain(answer, "discovery", client.key is not None)
    discovery = answer.json()
    service = next((s for s in discovery.get("services", []) if s.get("id") == service_id), None)
    if service is None:
        fail(f"discovery at {base} lists no service '{service_id}'", FAILED)
    templates: dict[str, str] = service.get("prefetch", {})

    request: dict[str, Any] = {"hook": service.get("hook", "patient-view"), "hookInstance": str(uuid.uuid4())}
    if bundle_file is not None:
        try:
            bundle = json.loads(bundle_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"{bundle_file}: not a readable JSON Bundle ({exc})", 2)
        if as_of:
            bundle = as_of_now(bundle, datetime.now(UTC).date())
        try:
            patient = patient or patient_of(bundle)
        except ValueError as exc:
            fail(f"{bundle_file}: {exc}", 2)
        request["prefetch"] = prefetch_from_bundle(bundle, templates, patient)
    else:
        assert fhir_server is not None
        if not patient:
            fail("--fhir-server needs --patient", 2)
        if prefetch:
            request["prefetch"] = _prefetch_from_server(templates, fhir_server, patient, fhir_token, timeout)
        request["fhirServer"] = fhir_server
        if fhir_token:
            request["fhirAuthorization"] = {
                "access_token": fhir_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/Patient.read patient/Observation.read patient/Condition.read",
                "subject": "nxp2-cds",
                "patient": patient,
            }
    request["context"] = {"userId": user, "patientId": patient}

    answer = client.send("POST", service_url, request)
    if answer.status_code != 200:
        _explain(answer, "the hook", client.key is not None)
    response = answer.json()
    problems = schema_problems("serviceResponse", response)
    if problems:
        fail(f"the response does not follow CDS Hooks 2.0: {problems[0]}", FAILED)
    if as_json:
        click.echo(json.dumps(response, indent=2, ensure_ascii=False))
    else:
        click.echo(render_cards(response, color=sys.stdout.isatty()))


# -- demo ----------------------------------------------------------------------------------------------------


@click.group()
def demo() -> None:
    """The synthetic example patients (examples/patients)."""


@demo.command("load")
@click.option("--fhir-server", required=True, help="The FHIR R4 server to load them into.")
@click.option("--token", help="A bearer token for the FHIR server.")
@click.option("--timeout", default=60.0, show_default=True)
def load(fhir_server: str, token: str | None, timeout: float) -> None:
    """Load every example patient (one transaction each, dates moved to now) and print the patient ids."""
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON} | ({"Authorization": f"Bearer {token}"} if token else {})
    today = datetime.now(UTC).date()
    for example in example_index()["patients"]:
        bundle = resolve_references(as_of_now(example_bundle(example["file"]), today))
        try:
            response = requests.post(fhir_server.rstrip("/"), data=json.dumps(bundle), headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            fail(f"cannot reach the FHIR server at {fhir_server}: {type(exc).__name__}", FAILED)
        if response.status_code not in (200, 201):
            fail(f"{example['file']}: the FHIR server answered {response.status_code}: {response.text[:200]}", FAILED)
        click.echo(f"{example['patient']}\t{example['description']}")


@demo.command("list")
def list_examples() -> None:
    """List the example patients and the cards the service gives each."""
    for example in example_index()["patients"]:
        cards = ", ".join(f"{k} {v}" for k, v in example["expected_cards"].items()) or "no card"
        click.echo(f"{example['patient']:<20} {cards:<48} {example['description']}")
