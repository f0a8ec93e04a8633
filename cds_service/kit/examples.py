"""The integration-team kit: what a CDS client does, so a team can fire the hook exactly as its EHR will.

- the example patients (FHIR R4 transaction Bundles) with every date moved so that "as of" is now;
- prefetch built from a Bundle file, or from a FHIR server by running the discovery templates;
- responses checked against the CDS Hooks schema and shown readably in a terminal.

Pure helpers; the command line (:mod:`cli_kit`) does the HTTP.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from cds_service.contracts import EXTENSION_KEY
from cds_service.resources import examples_dir
from fhir_mappings.dates import parse_fhir_datetime

Json = dict[str, Any]
_DATE_KEYS = frozenset(
    {
        "birthDate",
        "effectiveDateTime",
        "effectiveInstant",
        "issued",
        "onsetDateTime",
        "abatementDateTime",
        "recordedDate",
        "lastUpdated",
        "start",
        "end",
        "authoredOn",
    }
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# -- dates -----------------------------------------------------------------------------------------------


def shift_dates(document: Json, days: int) -> Json:
    """A copy of ``document`` with every FHIR date, dateTime and instant moved by ``days`` (ages are kept)."""
    moved: Json = copy.deepcopy(document)
    stack: list[Any] = [moved]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _DATE_KEYS and isinstance(value, str):
                    node[key] = _shift(value, days)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return moved


def _shift(value: str, days: int) -> str:
    parsed = parse_fhir_datetime(value)
    if parsed is None or len(value) < 10:
        return value
    if _DATE.match(value):
        return (date.fromisoformat(value) + timedelta(days=days)).isoformat()
    original = datetime.fromisoformat(value)
    shifted = (original + timedelta(days=days)).isoformat()
    return shifted.replace("+00:00", "Z") if value.endswith("Z") else shifted


def as_of_now(bundle: Json, today: date) -> Json:
    """The example Bundle with its dates moved so that its ``timestamp`` ("as of") falls on ``today``."""
    written = parse_fhir_datetime(bundle.get("timestamp"))
    if written is None:
        return bundle
    moved = shift_dates(bundle, (today - written.date()).days)
    moved["timestamp"] = bundle["timestamp"]
    return moved


# -- bundles -----------------------------------------------------------------------------------------------


def resolve_references(bundle: Json) -> Json:
    """A copy of a transaction Bundle whose ``urn:uuid`` references point at ``Type/id`` (entries carry their ids),
    as a FHIR server would store them: loadable by any server, usable as prefetch."""
    targets = {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if isinstance(entry.get("fullUrl"), str) and "id" in resource:
            targets[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
    text = json.dumps(bundle)
    for full_url, reference in targets.items():
        text = text.replace(json.dumps(full_url), json.dumps(reference))
    resolved: Json = json.loads(text)
    return resolved


def patient_of(bundle: Json) -> str:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "Patient" and isinstance(resource.get("id"), str):
            return str(resource["id"])
    raise ValueError("the Bundle has no Patient with an id")


def prefetch_from_bundle(bundle: Json, templates: Mapping[str, str], patient_id: str) -> Json:
    """What a CDS client would prefetch for each discovery template, taken from a Bundle of the patient's data:
    a read template gets the resource itself, a search template a searchset of every resource of its type."""
    resources_by_type: dict[str, list[Json]] = {}
    for entry in resolve_references(bundle).get("entry", []):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            resources_by_type.setdefault(resource.get("resourceType", ""), []).append(resource)
    prefetch: Json = {}
    for key, template in templates.items():
        path = template.split("?", 1)[0]
        kind = path.split("/", 1)[0]
        if "/" in path:  # a read: Type/{{context.patientId}}
            found = [r for r in resources_by_type.get(kind, []) if r.get("id") == patient_id]
            prefetch[key] = found[0] if found else None
        else:
            matching = resources_by_type.get(kind, [])
            prefetch[key] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(matching),
                "entry": [{"fullUrl": f"{kind}/{r.get('id')}", "resource": r} for r in matching],
            }
    return prefetch


def example_index() -> Json:
    index: Json = json.loads((examples_dir() / "index.json").read_text(encoding="utf-8"))
    return index


def example_bundle(file_name: str) -> Json:
    bundle: Json = json.loads((examples_dir() / file_name).read_text(encoding="utf-8"))
    return bundle


# -- responses -------------------------------------------------------------------------------------------


@cache
def _schema() -> Json:
    text = resources.files("cds_service").joinpath("schemas/cds-hooks-2.0.1.derived.schema.json").read_text()
    loaded: Json = json.loads(text)
    return loaded


def schema_problems(definition: str, document: Any) -> list[str]:
    """Where ``document`` breaks the derived CDS Hooks 2.0.1 schema (``$defs/<definition>``), or nothing."""
    schema = {"$ref": f"#/$defs/{definition}", "$defs": _schema()["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in validator.iter_errors(document)]
    if definition == "serviceResponse" and isinstance(document, dict):
        problems += [
            f"cards/{i}/summary: 140 characters or more"
            for i, card in enumerate(document.get("cards", []))
            if isinstance(card, dict) and len(str(card.get("summary", ""))) >= 140
        ]
    return problems


def card_tiers(response: Json) -> dict[str, str]:
    """``{outcome or "screening": indicator}`` of a response's cards."""
    out = {}
    for card in response.get("cards", []):
        extension = card.get("extension", {}).get(EXTENSION_KEY, {})
        out[extension.get("outcome") or extension.get("cardType") or "card"] = card.get("indicator")
    return out


def render_cards(response: Json, *, color: bool = False) -> str:
    """The cards for a terminal: indicator, summary, the predictor table, suggestions and links."""
    cards = response.get("cards", [])
    if not cards:
        return "No cards (the model does not apply to this patient, or every predictor is absent)."
    marks = {"critical": ("CRITICAL", "red"), "warning": ("WARNING", "yellow"), "info": ("INFO", "blue")}
    lines: list[str] = []
    for card in cards:
        label, shade = marks.get(card.get("indicator", ""), (str(card.get("indicator")).upper(), "white"))
        heading = f"[{label}] {card.get('summary', '')}"
        lines.append(_style(heading, shade, color))
        extension = card.get("extension", {}).get(EXTENSION_KEY)
        if extension:
            lines.append(f"  {'predictor':<22} {'state':<8} {'value':<18} {'date':<11} source")
            for p in extension.get("predictors", []):
                value = "" if p.get("value") in (None, True, False) else f"{p['value']}"
                if p.get("unit") and value and not str(p["unit"]).startswith("{"):
                    value += f" {p['unit']}"
                marker = "*" if p.get("drivesTier") else " "
                sources = ", ".join(p.get("sources", []))
                lines.append(
                    f" {marker}{p['id']:<22} {p['state']:<8} {value[:18]:<18} {(p.get('effective') or '')[:10]:<11} "
                    f"{sources}".rstrip()
                )
            lines.append("  (* sets this card's tier)")
        for suggestion in card.get("suggestions", []):
            lines.append(f"  suggestion: {suggestion.get('label')}")
        for link in card.get("links", []):
            lines.append(f"  link: {link.get('label')} <{link.get('url')}>")
        lines.append(f"  source: {card.get('source', {}).get('label')}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _style(text: str, shade: str, color: bool) -> str:
    if not color:
        return text
    import click

    return click.style(text, fg=shade, bold=True)
