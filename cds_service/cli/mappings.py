"""``nxp2-cds mappings survey``: which of a FHIR server's codes look like a predictor but are not mapped.

The survey talks to the FHIR server exactly as the service does (:mod:`cds_service.fhir.client`, built from the
same ``[fhir]`` settings): the server must be on ``[fhir] allowed_servers`` (https unless ``allow_http``), every
request has ``request_timeout_seconds``, each search with its pages ``deadline_seconds``, a page at most
``max_response_bytes``, at most ``max_pages`` pages per search (``next`` links on the server's origin only), and the
token goes to that server only. The counting and matching are in :mod:`cds_service.kit.survey`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from urllib.parse import quote

import click
import orjson

from cds_service.cli.common import engine_or_fail, fail, settings_or_fail
from cds_service.fhir.client import (
    Deadline,
    FhirClient,
    FhirError,
    FhirNotAllowed,
    ServerPolicy,
    has_next_page,
    new_session,
)
from cds_service.kit.survey import SearchReport, Survey
from cds_service.settings import Settings

DEFAULT_PAGE_SIZE = 1000
_FHIR_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")

Connect = Callable[[], FhirClient]


def queries(patients: Sequence[str], page_size: int) -> list[str]:
    """The searches of a survey: type searches over the whole server, or each patient's Observations and
    Conditions. ``_elements`` asks for the codes only (a server that ignores it sends whole resources)."""
    if not patients:
        return [
            f"Observation?_elements=code,component&_count={page_size}",
            f"Condition?_elements=code&_count={page_size}",
        ]
    out: list[str] = []
    for patient in patients:
        pid = quote(patient, safe="")
        out.append(f"Observation?patient={pid}&_elements=code,component&_count={page_size}")
        out.append(f"Condition?patient={pid}&_elements=code&_count={page_size}")
    return out


def run_search(client: FhirClient, query: str, survey: Survey) -> SearchReport:
    """Run one search and count its pages, at most the client's ``max_pages``. A failure on the first page raises
    :class:`FhirError`; on a later page the search stops there and the report says why (so does the bound)."""
    page = client.get(query)
    if page.get("resourceType") != "Bundle":
        raise FhirError(f"the FHIR server did not answer {query.split('?', 1)[0]} with a search Bundle")
    total = page.get("total")
    pages, resources = 1, survey.add_bundle(page)
    stopped: str | None = None
    while has_next_page(page):
        if pages >= client.max_pages:
            stopped = f"stopped after {pages} pages ([fhir] max_pages = {client.max_pages})"
            break
        try:
            page = client.next_page(page)
        except FhirError as exc:
            stopped = f"stopped after {pages} page{'s' if pages != 1 else ''}: {exc}"
            break
        pages += 1
        resources += survey.add_bundle(page)
    return SearchReport(
        query=query,
        pages=pages,
        resources=resources,
        total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        stopped=stopped,
    )


def connector(settings: Settings, fhir_server: str, token: str | None) -> tuple[str, Connect]:
    """The server's normalised base URL and a maker of clients, one per search, built as
    :meth:`cds_service.web.runtime.Runtime.connect` builds one per hook call. Raises :class:`FhirNotAllowed` (before any
    request) for a server the settings do not allow."""
    fhir = settings.fhir
    base = ServerPolicy(fhir.allowed_servers, fhir.allow_http).check(fhir_server)
    session = new_session()

    def connect() -> FhirClient:
        return FhirClient(
            session,
            base,
            token=token,
            deadline=Deadline(fhir.deadline_seconds),
            request_timeout=fhir.request_timeout_seconds,
            max_pages=fhir.max_pages,
            max_bytes=fhir.max_response_bytes,
        )

    return base, connect


@click.group()
def mappings() -> None:
    """A site's own codes and the value sets ([mappings.local_codes])."""


@mappings.command("survey")
@click.option("--fhir-server", required=True, metavar="URL", help="The site's FHIR R4 base URL (on the allowlist).")
@click.option(
    "--patient",
    "patients",
    multiple=True,
    metavar="ID",
    help="Survey these patients' Observations and Conditions (repeatable); default: the whole server.",
)
@click.option("--token", help="A bearer token for the FHIR server (sent to that server only).")
@click.option(
    "--page-size",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_PAGE_SIZE,
    show_default=True,
    help="_count of each search page.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of the report.")
def survey(fhir_server: str, patients: tuple[str, ...], token: str | None, page_size: int, as_json: bool) -> None:
    """List the codes on a FHIR server whose names look like a predictor (NXP2, ferritin, CD4/CD8, muscle grade,
    edema ...) but are not mapped, with counts, and print the [mappings.local_codes] section to use.

    Uses the service's outbound rules ([fhir] settings): the server must be on [fhir] allowed_servers."""

    bad = [p for p in patients if not _FHIR_ID.match(p)]
    if bad:
        fail(f"--patient {bad[0]!r} is not a FHIR id (A-Z, a-z, 0-9, '-', '.'; at most 64)")
    settings = settings_or_fail()
    try:
        base, connect = connector(settings, fhir_server, token)
    except FhirNotAllowed as exc:
        fail(
            f"refusing to survey {fhir_server}: {exc}. The survey follows the service's outbound rules: add the "
            "server to [fhir] allowed_servers (and allow_http = true for a plain-http test server) in the site "
            "configuration (NXP2_CDS_CONFIG)"
        )
    engine = engine_or_fail(settings)
    counter = Survey(engine.knowledge, engine.terminology, settings.mappings.local_codes)
    reports: list[SearchReport] = []
    for query in queries(patients, page_size):
        try:
            reports.append(run_search(connect(), query, counter))
        except FhirError as exc:
            hint = " (is --token needed, or the right one?)" if "answered 401" in str(exc) else ""
            fail(f"{fhir_server}: {query}: {exc}{hint}")
    result = counter.result(base, reports, patients)
    if as_json:
        click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(result.render(), nl=False)
