"""Prefetch: the templates discovery advertises, what a request brought, and fetching what it did not.

Per key of the templates (CDS Hooks 2.0 §Prefetch):

- a resource or Bundle is used as given (a Bundle with a ``next`` link is followed on the FHIR server);
- ``null`` means the client has no data: nothing is fetched;
- an OperationOutcome (the client's prefetch error) or an absent key means "fetch it yourself": from
  ``fhirServer``, with the ``fhirAuthorization`` token when given, all missing keys in one batch round trip;
- when the data cannot be had (no ``fhirServer``, a server off the allowlist, an error, a timeout, an unreadable
  answer) the answer is 412 with an OperationOutcome naming the keys.

The service fetches exactly what the templates say, so prefetched and fetched data are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cds_service.core.engine import Engine
from cds_service.errors import BadRequest, Issue, PayloadTooLarge, PreconditionFailed
from cds_service.fhir.client import FhirClient, FhirError, FhirNotAllowed, has_next_page
from cds_service.protocol import HookRequest, PatientViewContext
from cds_service.telemetry.metrics import Metrics
from fhir_mappings import FindingRule
from fhir_mappings.pruned import Originals, PrunedResources

Json = dict[str, Any]
PATIENT_TOKEN = "{{context.patientId}}"  # noqa: S105 - a CDS Hooks prefetch token, not a secret


LABORATORY_KEY = "laboratory"
LABORATORY_CATEGORY = "laboratory"


def build_templates(engine: Engine) -> dict[str, str]:
    """The prefetch templates: the Patient, the patient's Observations with every code the value sets need
    (ICD-10 codes are for Conditions and left out), and the patient's Conditions (all of them: ICD-10 codes are
    often stored without the dot, so a code filter would miss them). Within the spec's prefetch query
    restrictions: a read, and type searches by reference and token.

    While a predictor read from laboratory results has no code at all (anti-NXP2 has no LOINC code; until the
    site maps its local one), a fourth template fetches the patient's laboratory results by category
    (``category=laboratory``: the search US Core requires of every server, a token search within the prefetch
    restrictions), so a result recognisable only by its name reaches the service from the EHR and from the
    fallback alike. ``code:text`` would fetch less, but few servers support it."""
    rules = engine.rules.predictors.values()
    concepts = sorted(
        {c for rule in rules if not (isinstance(rule, FindingRule) and not rule.observations) for c in rule.concepts()}
    )
    terminology = engine.terminology
    codes = [
        f"{quote(system, safe=':/.-')}|{quote(code, safe='.-')}"
        for system, code in terminology.codes_of(concepts)
        if not terminology.is_dotless(system)
    ]
    templates = {
        "patient": f"Patient/{PATIENT_TOKEN}",
        "observations": f"Observation?patient={PATIENT_TOKEN}&code={','.join(codes)}",
        "conditions": f"Condition?patient={PATIENT_TOKEN}",
    }
    if any(how == "by-name" for how in engine.unmapped_by_code().values()):
        templates[LABORATORY_KEY] = f"Observation?patient={PATIENT_TOKEN}&category={LABORATORY_CATEGORY}"
    return templates


def render(template: str, context: PatientViewContext) -> str:
    """Fill the template's tokens (only ``{{context.patientId}}`` is used; the id is already a valid FHIR id)."""
    return template.replace(PATIENT_TOKEN, context.patientId)


@dataclass
class Resolved:
    """The data of one hook call and how it was obtained."""

    resources: PrunedResources = field(default_factory=PrunedResources)
    """The prefetched values (pruned ones with their original JSON) and the pages fetched from the FHIR server."""
    given: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    paged: list[str] = field(default_factory=list)
    fhir_requests: int = 0


Connect = Callable[[str, str | None], FhirClient]
"""``(fhirServer, access token or None) → FhirClient``; raises :class:`FhirError` when the server is not allowed."""


def resolve(
    request: HookRequest,
    context: PatientViewContext,
    templates: Mapping[str, str],
    connect: Connect,
    *,
    metrics: Metrics,
    max_resources: int,
    originals: Originals | None = None,
) -> Resolved:
    """The resources of ``templates``: given in the prefetch, or fetched; counted in ``metrics`` (the
    application's). ``max_resources``: ``max_prefetch_resources`` of the settings. ``originals`` (from
    :func:`cds_service.web.decode.hook_body`) holds the original JSON of the prefetch resources that were pruned."""
    prefetch = request.prefetch or {}
    given = sum(_count(value) for key, value in prefetch.items() if key in templates)
    if given > max_resources:
        raise PayloadTooLarge(f"The prefetch holds {given} resources; this service accepts at most {max_resources}.")
    result = Resolved(resources=PrunedResources(originals=originals))
    to_fetch: list[str] = []
    to_page: list[tuple[str, Json]] = []
    for key in templates:
        if key not in prefetch:
            to_fetch.append(key)
            continue
        value = prefetch[key]
        if value is None:
            result.empty.append(key)
        elif not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise BadRequest(
                f"prefetch '{key}' is not a FHIR resource",
                issues=[
                    Issue(
                        f"prefetch '{key}' must be a FHIR resource, a Bundle, or null", "invalid", (f"prefetch.{key}",)
                    )
                ],
            )
        elif value["resourceType"] == "OperationOutcome":
            to_fetch.append(key)
        else:
            result.given.append(key)
            if has_next_page(value):
                to_page.append((key, value))
            else:
                result.resources.append(value)
    metrics.prefetch_keys.labels("given").inc(len(result.given))
    metrics.prefetch_keys.labels("null").inc(len(result.empty))
    if not to_fetch and not to_page:
        return result

    keys = to_fetch + [key for key, _ in to_page]
    if request.fhirServer is None:
        raise _unavailable(keys, "the request has no fhirServer to fetch it from")
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    client: FhirClient | None = None
    started = time.perf_counter()
    try:
        client = connect(request.fhirServer, token)
        fetched = client.get_many([render(templates[key], context) for key in to_fetch])
        for key, resource in zip(to_fetch, fetched, strict=True):
            result.fetched.append(key)
            pages = client.follow_pages(resource) if has_next_page(resource) else [resource]
            result.resources.extend(pages)
        for key, bundle in to_page:
            result.paged.append(key)
            result.resources.extend(client.follow_pages(bundle))
    except FhirError as exc:
        metrics.fhir_calls.labels(type(exc).__name__).inc()
        if isinstance(exc, FhirNotAllowed):
            metrics.fhir_refused.labels(exc.reason).inc()
        raise _unavailable(keys, str(exc)) from exc
    finally:
        if client is not None:
            result.fhir_requests = client.requests_sent
            metrics.fhir_requests.inc(client.requests_sent)
        metrics.fhir_seconds.observe(time.perf_counter() - started)
    metrics.fhir_calls.labels("ok").inc()
    metrics.prefetch_keys.labels("fetched").inc(len(result.fetched))
    metrics.prefetch_keys.labels("paged").inc(len(result.paged))
    return result


def _count(value: object) -> int:
    if isinstance(value, dict) and value.get("resourceType") == "Bundle" and isinstance(value.get("entry"), list):
        return len(value["entry"])
    return 1


def _unavailable(keys: Sequence[str], reason: str) -> PreconditionFailed:
    issues = [
        Issue(
            f"prefetch '{key}' was not provided and could not be fetched: {reason}", "incomplete", (f"prefetch.{key}",)
        )
        for key in keys
    ]
    return PreconditionFailed(f"prefetch data unavailable ({', '.join(keys)}): {reason}", keys=keys, issues=issues)
