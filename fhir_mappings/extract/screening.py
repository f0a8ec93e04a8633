"""Pass 1, what is there: one pass over the flattened resources keeps, per concept, the Observations (or their
components) and Conditions of this patient that some predictor reads; every other resource is skipped with its
reason. Nothing is validated or read here beyond codes, subject, status and date.

Rules applied here (DESIGN.md): Observations count with a final / amended / corrected status, and a preliminary or
registered one is kept aside as pending; a Condition is read as a clinician reads a problem list; another patient's
resource, a duplicate, a resource with a modifier extension, and a multi-antibody panel's own value are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from ..dates import condition_effective, observation_effective, shifted
from ..model import SkipReason
from ..terminology import codeable_texts
from .bundles import flatten
from .run import ACTIVE, INACTIVE, REFUTED, SUSPECTED, Item, Json, Run

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_READ_TYPES = frozenset({"Observation", "Condition", "Patient"})


def collect(run: Run, inputs: Iterable[object]) -> None:
    """Screen every resource of ``inputs`` into ``run`` (items, pending results, the Patient, skip reasons)."""
    flat: list[tuple[Json, str | None]] = []
    for resource, full_url in flatten(inputs):
        if resource is None:
            run.malformed += 1
        else:
            flat.append((resource, full_url))
    run.seen = len(flat) + run.malformed
    run.aliases = {f"Patient/{run.patient_id}"}
    for resource, full_url in flat:
        if resource.get("resourceType") == "Patient" and resource.get("id") == run.patient_id and full_url:
            run.aliases.add(full_url)
    seen_ids: set[tuple[str, str]] = set()
    for resource, full_url in flat:
        rtype = resource.get("resourceType")
        rid = resource.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            if (rtype, rid) in seen_ids:
                run.skip(resource, SkipReason.DUPLICATE)
                continue
            seen_ids.add((rtype, rid))
        if rtype in _READ_TYPES and modified(resource):
            run.skip(resource, SkipReason.MODIFIER_EXTENSION)
            continue
        if rtype == "Observation":
            _observation(run, resource, full_url)
        elif rtype == "Condition":
            _condition(run, resource, full_url)
        elif rtype == "Patient":
            if rid == run.patient_id:
                if run.valid(resource):
                    run.patient_found = True
                    run.birth_date_raw = resource.get("birthDate")
                    gender = resource.get("gender")
                    run.sex = gender if gender in ("male", "female") else None
                    run.used.add(id(resource))
            else:
                run.skip(resource, SkipReason.OTHER_PATIENT)
        else:
            run.skip(resource, SkipReason.UNRELATED)


def modified(resource: Json) -> bool:
    """Whether ``resource`` carries a modifier extension — on itself, or on a component or reference range the
    rules read. FHIR: a modifier extension can change the meaning of everything around it (a result "not done", a
    condition negated), and an application that does not know it SHALL NOT process the resource. This service knows
    none, so such a resource is skipped (``modifier-extension``), never read as if the extension were not there."""
    if resource.get("modifierExtension"):
        return True
    for backbone in ("component", "referenceRange"):
        parts = resource.get(backbone)
        if isinstance(parts, list) and any(isinstance(p, dict) and p.get("modifierExtension") for p in parts):
            return True
    return False


def _subject_reason(run: Run, resource: Json) -> SkipReason | None:
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(ref, str):
        return SkipReason.NO_SUBJECT
    if ref in run.aliases:
        return None
    m = _PATIENT_REF.search(ref)
    return None if m is not None and m.group(1) == run.patient_id else SkipReason.OTHER_PATIENT


def _reference(resource: Json, full_url: str | None) -> str:
    rid = resource.get("id")
    if isinstance(rid, str):
        return f"{resource['resourceType']}/{rid}"
    return full_url or f"{resource['resourceType']}/(no id)"


def _text_concepts(run: Run, codeable: object) -> frozenset[str]:
    """Concepts whose text pattern matches ``code.text`` or a ``coding.display``."""
    setup = run.setup
    if not setup.pattern_concepts or not isinstance(codeable, dict):
        return frozenset()
    found: frozenset[str] = frozenset()
    for text in codeable_texts(codeable):
        found = found | setup.terminology.concepts_for_text(text)
    return found & setup.wanted if found else found


def _concepts_of(run: Run, codeable: object) -> tuple[frozenset[str], bool]:
    """The wanted concepts of a code, and whether they were found by name (text pattern) only."""
    key = id(codeable)
    found = run.code_concepts.get(key)
    if found is None:
        hit = run.setup.terminology.concepts_for_codeable(codeable) & run.setup.wanted
        if hit:
            found = hit, False
        else:
            by_text = _text_concepts(run, codeable)
            found = by_text, bool(by_text)
        run.code_concepts[key] = found
    return found


def _names_a_panel(run: Run, codeable: object) -> bool:
    setup = run.setup
    return any(setup.terminology.text_matches(setup.answers.panel, t) for t in codeable_texts(codeable))


def _observation(run: Run, resource: Json, full_url: str | None) -> None:
    reason = _subject_reason(run, resource)
    if reason is not None:
        run.skip(resource, reason)
        return
    setup = run.setup
    code = resource.get("code")
    own, by_text = _concepts_of(run, code)
    matches: list[tuple[Json, str, bool]] = []
    components = resource.get("component")
    component_concepts: set[str] = set()
    if isinstance(components, list):
        for component in components:
            if isinstance(component, dict):
                hit, _ = _concepts_of(run, component.get("code"))
                component_concepts |= hit
                matches.extend((component, c, False) for c in hit)
    if own:
        # A panel's own value or interpretation is not specific to one antibody: only its component is.
        panel = by_text and ("hasMember" in resource or bool(components) or _names_a_panel(run, code))
        specific = frozenset() if panel else own - component_concepts
        matches[:0] = [(resource, c, False) for c in specific]
        if not matches and panel:
            run.skip(resource, SkipReason.PANEL_LEVEL_RESULT)
            return
    value_cc = resource.get("valueCodeableConcept")
    if value_cc is not None and setup.finding_concepts:
        hit = setup.terminology.concepts_for_codeable(value_cc) & setup.finding_concepts
        matches.extend((resource, c, True) for c in hit)
    if not matches:
        run.skip(resource, SkipReason.UNRELATED)
        return
    status = resource.get("status")
    data = setup.rules.data
    if status not in data.observation_statuses:
        run.skip(resource, SkipReason.observation_status(status))
        if status in data.observation_pending_statuses:
            when, raw = observation_effective(resource)
            reference = _reference(resource, full_url)
            for part, concept, as_value in matches:
                run.pending.setdefault(concept, []).append(
                    Item(resource, part, reference, "Observation", when, raw, concept, as_value)
                )
        return
    when, raw = observation_effective(resource)
    if not _admit_date(run, resource, when, raw):
        return
    reference = _reference(resource, full_url)
    specimen = resource.get("specimen")
    specimen_ref = specimen.get("reference") if isinstance(specimen, dict) else None
    run.candidates[id(resource)] = resource
    for part, concept, as_value in matches:
        run.items.setdefault(concept, []).append(
            Item(
                resource,
                part,
                reference,
                "Observation",
                when,
                raw,
                concept,
                as_value,
                specimen=specimen_ref if isinstance(specimen_ref, str) else None,
            )
        )


def _condition_status(run: Run, resource: Json) -> str | None:
    """How a problem list entry reads: active, suspected, inactive or refuted; ``None`` (skipped, with the
    reason) for entered-in-error, no clinical status, or a status no rule knows."""
    data = run.setup.rules.data
    verification = first_code(resource.get("verificationStatus"))
    if verification in data.condition_excluded_verification:
        run.skip(resource, SkipReason.condition_status(verification))
        return None
    if verification in data.condition_refuted_verification:
        return REFUTED
    clinical = first_code(resource.get("clinicalStatus"))
    abated = any(k.startswith("abatement") for k in run.full(resource))  # every key, as sent
    if abated or clinical in data.condition_inactive_statuses:
        return INACTIVE
    if verification in data.condition_suspected_verification:
        return SUSPECTED
    if clinical is None:
        run.skip(resource, SkipReason.CONDITION_NO_CLINICAL_STATUS)
        return None
    if clinical in data.condition_clinical_statuses:
        return ACTIVE
    run.skip(resource, SkipReason.condition_status(clinical))
    return None


def _condition(run: Run, resource: Json, full_url: str | None) -> None:
    reason = _subject_reason(run, resource)
    if reason is not None:
        run.skip(resource, reason)
        return
    setup = run.setup
    concepts = setup.terminology.concepts_for_codeable(resource.get("code")) & setup.finding_concepts
    if not concepts:
        run.skip(resource, SkipReason.UNRELATED)
        return
    status = _condition_status(run, resource)
    if status is None:
        return
    when, raw = condition_effective(resource)
    if not _admit_date(run, resource, when, raw):
        return
    reference = _reference(resource, full_url)
    run.candidates[id(resource)] = resource
    for concept in concepts:
        run.items.setdefault(concept, []).append(
            Item(resource, resource, reference, "Condition", when, raw, concept, status=status)
        )


def _admit_date(run: Run, resource: Json, when: datetime | None, raw: str | None) -> bool:
    if raw is not None and when is None:
        run.skip(resource, SkipReason.UNREADABLE_DATE)
        return False
    tolerance = timedelta(hours=run.setup.rules.data.future_tolerance_hours)
    if when is not None and when > shifted(run.at, tolerance):
        run.skip(resource, SkipReason.FUTURE_DATED)
        return False
    return True


def first_code(codeable: object) -> str | None:
    """The first ``coding.code`` of a CodeableConcept."""
    if isinstance(codeable, dict):
        codings = codeable.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    return str(coding["code"])
    return None
