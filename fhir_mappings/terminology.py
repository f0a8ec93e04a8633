"""Value sets and naming systems, loaded once, validated with fhir.resources, compiled into lookup tables.

The clinical codes live in ``fhir_mappings/valuesets/*.json`` (one FHIR R4 ValueSet per concept) and the code
system aliases in ``fhir_mappings/naming-systems.json`` (FHIR NamingSystem resources). Nothing here knows a code:
it only reads those files, adds a site's local codes, and answers "which concepts does this coding belong to?"
in one dictionary lookup.

Supported ValueSet content: ``compose.include`` with ``system`` and enumerated ``concept`` entries, and for
ICD-10 systems an ``is-a`` filter on ``concept`` (every code that starts with the given code, dot-less).
Extensions of this project (``urn:nxp2-cds:fhir:StructureDefinition:*``): ``text-pattern`` (a regular expression
matched against ``code.text`` / ``coding.display`` for concepts, or against result text for answer sets),
``survey-pattern`` (a regular expression for names that *look like* the concept: only ``nxp2-cds mappings survey``
uses it, to list a server's unmapped codes; it never decides a finding), ``verification`` (verified / corroborated /
unverified), ``source`` and ``note`` per concept. A NamingSystem marked ``icd-national-extension`` (WHO ICD-10) also
matches a national extension of a code the value set holds: ``M33.001`` (China's clinical edition) is ``M33.0``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.namingsystem import NamingSystem
from fhir.resources.R4B.valueset import ValueSet

EXT_BASE = "urn:nxp2-cds:fhir:StructureDefinition:"
EXT_TEXT_PATTERN = EXT_BASE + "text-pattern"
EXT_SURVEY_PATTERN = EXT_BASE + "survey-pattern"
EXT_VERIFICATION = EXT_BASE + "verification"
EXT_SOURCE = EXT_BASE + "source"
EXT_NOTE = EXT_BASE + "note"
EXT_NORMALISATION = EXT_BASE + "code-normalisation"

VERIFICATION_LEVELS = ("verified", "corroborated", "unverified")
_MIN_ICD_CATEGORY = 3
"""The shortest ICD-10 code (a three-character category) a national extension is matched back to."""
_NOTHING: frozenset[str] = frozenset()
_MEMO_LIMIT = 100_000
"""Memoised lookups kept at most (then forgotten at once): bounded memory whatever the input."""
MAX_TEXT = 1_000
"""Text patterns see at most this many characters of a display or text: test names are far shorter, and a 1 MB
``code.text`` (sent on every Observation of a chart) would otherwise cost every pattern a full scan each time."""
MAX_CODE = 1_000
"""Longer codes or systems match nothing (no value set holds one) and are not memoised."""


def _seen(text: str) -> str:
    """The part of ``text`` the patterns look at."""
    return text[:MAX_TEXT] if len(text) > MAX_TEXT else text


class TerminologyError(ValueError):
    """A value set, naming system or local code cannot be used; the message names the file and field."""


@dataclass(frozen=True, slots=True)
class CodeEntry:
    """One code of a value set, with what the project knows about it."""

    system: str
    code: str
    display: str | None
    verification: str
    source: str | None = None
    note: str | None = None
    local: bool = False


@dataclass(frozen=True, slots=True)
class Concept:
    """One compiled value set."""

    id: str
    url: str
    title: str
    description: str
    codes: tuple[CodeEntry, ...]
    prefixes: tuple[tuple[str, str], ...] = ()
    """``(system, dot-less code prefix)`` pairs from ``is-a`` filters."""
    text_pattern: re.Pattern[str] | None = None
    survey_pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class LocalCode:
    system: str
    code: str


def parse_local_code(token: str) -> LocalCode:
    """``"system|code"`` → :class:`LocalCode` (the FHIR search token syntax)."""
    system, sep, code = token.partition("|")
    if not sep or not system.strip() or not code.strip():
        raise TerminologyError(f"local code {token!r} must be written 'system|code'")
    return LocalCode(system.strip(), code.strip())


@dataclass(frozen=True)
class Terminology:
    """All concepts, compiled for matching. Build it with :func:`load_terminology`."""

    concepts: Mapping[str, Concept]
    _canonical: Mapping[str, str] = field(repr=False)
    _dotless: frozenset[str] = field(repr=False)
    _index: Mapping[tuple[str, str], frozenset[str]] = field(repr=False)
    _prefix_index: Mapping[str, tuple[tuple[str, str], ...]] = field(repr=False)
    _patterns: tuple[tuple[str, re.Pattern[str]], ...] = field(repr=False, default=())
    _extended: frozenset[str] = field(repr=False, default=frozenset())
    """Systems whose national extensions match their parent code (WHO ICD-10)."""
    _memo: dict[tuple[str, str], frozenset[str]] = field(repr=False, default_factory=dict, compare=False)

    # -- normalisation -------------------------------------------------------------------------------
    def canonical_system(self, system: str) -> str:
        """The preferred URI of a code system given any of its aliases (URI, ``urn:oid:`` form, bare OID)."""
        s = system.strip()
        return self._canonical.get(s, s)

    def normalise_code(self, canonical_system: str, code: str) -> str:
        c = code.strip()
        if canonical_system in self._dotless:
            return c.replace(".", "").upper()
        return c

    def is_dotless(self, canonical_system: str) -> bool:
        """ICD-10 systems, whose codes are compared without the dot (and never used as Observation codes)."""
        return canonical_system in self._dotless

    def codes_of(self, concept_ids: Iterable[str]) -> list[tuple[str, str]]:
        """Every ``(system, code)`` of the given concepts, local codes included, sorted and unique."""
        return sorted({(c.system, c.code) for cid in concept_ids for c in self.concepts[cid].codes})

    # -- matching ------------------------------------------------------------------------------------
    def concepts_for(self, system: object, code: object) -> frozenset[str]:
        """The concept ids a ``(system, code)`` coding belongs to (empty when none or malformed). Answers are
        memoised: a chart repeats the same few hundred codes, so each is normalised and looked up once."""
        if not isinstance(system, str) or not isinstance(code, str):
            return _NOTHING
        if len(system) > MAX_CODE or len(code) > MAX_CODE:
            return _NOTHING
        key = (system, code)
        found = self._memo.get(key)
        if found is None:
            found = self._lookup(system, code)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
        return found

    def _lookup(self, system: str, code: str) -> frozenset[str]:
        canonical = self.canonical_system(system)
        normalised = self.normalise_code(canonical, code)
        found = self._index.get((canonical, normalised), _NOTHING)
        if not found and canonical in self._extended:
            for length in range(len(normalised) - 1, _MIN_ICD_CATEGORY - 1, -1):
                found = self._index.get((canonical, normalised[:length]), _NOTHING)
                if found:
                    break
        prefixes = self._prefix_index.get(canonical)
        if prefixes:
            extra = {cid for prefix, cid in prefixes if normalised.startswith(prefix)}
            if extra:
                found = found | extra
        return found

    def concepts_for_codeable(self, codeable: object) -> frozenset[str]:
        """Concept ids of any coding of a CodeableConcept-shaped dict (text patterns not applied)."""
        if not isinstance(codeable, dict):
            return _NOTHING
        codings = codeable.get("coding")
        if not isinstance(codings, list):
            return _NOTHING
        found = _NOTHING
        for coding in codings:
            if isinstance(coding, dict):
                hit = self.concepts_for(coding.get("system"), coding.get("code"))
                if hit:
                    found = found | hit if found else hit
        return found

    def text_matches(self, concept_id: str, text: str) -> bool:
        pattern = self.concepts[concept_id].text_pattern
        return pattern is not None and pattern.search(_seen(text)) is not None

    def survey_concepts_for_text(self, text: str) -> frozenset[str]:
        """The concepts whose text pattern or survey pattern matches ``text``: names that look like the concept."""
        text = _seen(text)
        return frozenset(
            cid
            for cid, concept in self.concepts.items()
            for pattern in (concept.text_pattern, concept.survey_pattern)
            if pattern is not None and pattern.search(text) is not None
        )

    def concepts_for_text(self, text: str) -> frozenset[str]:
        """The concepts whose text pattern matches ``text`` (memoised: the same displays recur endlessly)."""
        text = _seen(text)
        key = ("", text)
        found = self._memo.get(key)
        if found is None:
            found = frozenset(cid for cid, pattern in self._patterns if pattern.search(text))
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
        return found


def codeable_texts(codeable: object) -> list[str]:
    """``text`` and every ``coding.display`` of a CodeableConcept-shaped dict."""
    if not isinstance(codeable, dict):
        return []
    texts: list[str] = []
    text = codeable.get("text")
    if isinstance(text, str):
        texts.append(text)
    codings = codeable.get("coding")
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                display = coding.get("display")
                if isinstance(display, str):
                    texts.append(display)
    return texts


# -- loading -------------------------------------------------------------------------------------------


def _package_file(name: str) -> Path:
    return Path(str(resources.files("fhir_mappings").joinpath(name)))


def default_valueset_dir() -> Path:
    return _package_file("valuesets")


def _ext_values(extensions: Sequence[Any] | None, url: str) -> list[Any]:
    out: list[Any] = []
    for ext in extensions or ():
        if ext.url == url:
            value = ext.valueString if ext.valueString is not None else ext.valueCode
            out.append(value)
    return out


def _load_naming_systems(path: Path) -> tuple[dict[str, str], frozenset[str], frozenset[str]]:
    try:
        bundle = Bundle.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TerminologyError(f"{path.name}: not a valid FHIR R4 Bundle of NamingSystem: {exc}") from exc
    canonical: dict[str, str] = {}
    dotless: set[str] = set()
    extended: set[str] = set()
    for entry in bundle.entry or ():
        ns = entry.resource
        if not isinstance(ns, NamingSystem):
            raise TerminologyError(f"{path.name}: entry {entry.fullUrl} is not a NamingSystem")
        preferred = [u.value for u in ns.uniqueId if u.type == "uri" and u.preferred and u.value]
        if len(preferred) != 1:
            raise TerminologyError(f"{path.name}: NamingSystem {ns.id} needs exactly one preferred uri")
        uri = preferred[0]
        for unique in ns.uniqueId:
            if unique.value is None:
                continue
            canonical[unique.value] = uri
            if unique.type == "oid":
                canonical["urn:oid:" + unique.value] = uri
        normalisations = _ext_values(ns.extension, EXT_NORMALISATION)
        if "icd-dotless" in normalisations:
            dotless.add(uri)
        if "icd-national-extension" in normalisations:
            extended.add(uri)
    return canonical, frozenset(dotless), frozenset(extended)


def _compile_pattern(source: str, patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except re.error as exc:
        raise TerminologyError(f"{source}: extension text-pattern is not a valid regular expression: {exc}") from exc


def _read_valueset(path: Path, canonical: Mapping[str, str]) -> tuple[Concept, list[tuple[str, str]]]:
    try:
        vs = ValueSet.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TerminologyError(f"{path.name}: not a valid FHIR R4 ValueSet: {exc}") from exc
    if vs.id is None or vs.url is None:
        raise TerminologyError(f"{path.name}: ValueSet.id and ValueSet.url are required")
    if path.stem != vs.id:
        raise TerminologyError(f"{path.name}: ValueSet.id {vs.id!r} must equal the file name")
    codes: list[CodeEntry] = []
    prefixes: list[tuple[str, str]] = []
    for i, include in enumerate(vs.compose.include if vs.compose else ()):
        where = f"{path.name}: compose.include[{i}]"
        if include.system is None:
            raise TerminologyError(f"{where}.system is required (valueSet references are not supported)")
        system = canonical.get(include.system, include.system)
        for entry in include.concept or ():
            if not entry.code:
                raise TerminologyError(f"{where}.concept: a concept without a code")
            verification = (_ext_values(entry.extension, EXT_VERIFICATION) or ["verified"])[0]
            if verification not in VERIFICATION_LEVELS:
                raise TerminologyError(f"{where}.concept {entry.code}: verification {verification!r} unknown")
            codes.append(
                CodeEntry(
                    system=system,
                    code=entry.code,
                    display=entry.display,
                    verification=verification,
                    source=next(iter(_ext_values(entry.extension, EXT_SOURCE)), None),
                    note=next(iter(_ext_values(entry.extension, EXT_NOTE)), None),
                )
            )
        for flt in include.filter or ():
            if flt.property != "concept" or flt.op != "is-a" or not flt.value:
                raise TerminologyError(f"{where}.filter: only property 'concept' with op 'is-a' is supported")
            prefixes.append((system, flt.value))
    pattern = _compile_pattern(path.name, _ext_values(vs.extension, EXT_TEXT_PATTERN))
    survey = _compile_pattern(path.name, _ext_values(vs.extension, EXT_SURVEY_PATTERN))
    concept = Concept(
        id=vs.id,
        url=vs.url,
        title=vs.title or vs.id,
        description=vs.description or "",
        codes=tuple(codes),
        text_pattern=pattern,
        survey_pattern=survey,
    )
    return concept, prefixes


def load_terminology(
    valueset_dir: Path | None = None,
    *,
    local_codes: Mapping[str, Iterable[str]] | None = None,
    naming_systems: Path | None = None,
) -> Terminology:
    """Load every ``*.json`` ValueSet of ``valueset_dir`` (default: the shipped value sets), add the site's
    ``local_codes`` (concept id → ``["system|code", …]``) and compile the lookup tables.

    Raises :class:`TerminologyError` naming the file and field when anything is wrong."""
    directory = valueset_dir or default_valueset_dir()
    canonical, dotless, extended = _load_naming_systems(naming_systems or _package_file("naming-systems.json"))
    concepts: dict[str, Concept] = {}
    raw_prefixes: dict[str, list[tuple[str, str]]] = {}
    files = sorted(directory.glob("*.json"))
    if not files:
        raise TerminologyError(f"no value sets (*.json) found in {directory}")
    for path in files:
        concept, prefixes = _read_valueset(path, canonical)
        concepts[concept.id] = concept
        raw_prefixes[concept.id] = prefixes

    for concept_id, tokens in (local_codes or {}).items():
        if concept_id not in concepts:
            raise TerminologyError(f"[mappings.local_codes]: unknown value set {concept_id!r}")
        base = concepts[concept_id]
        extra = []
        for token in tokens:
            local = parse_local_code(token)
            extra.append(
                CodeEntry(
                    system=canonical.get(local.system, local.system),
                    code=local.code,
                    display=None,
                    verification="unverified",
                    source="site configuration [mappings.local_codes]",
                    local=True,
                )
            )
        concepts[concept_id] = Concept(
            id=base.id,
            url=base.url,
            title=base.title,
            description=base.description,
            codes=base.codes + tuple(extra),
            text_pattern=base.text_pattern,
            survey_pattern=base.survey_pattern,
        )

    index: dict[tuple[str, str], set[str]] = {}
    prefix_index: dict[str, list[tuple[str, str]]] = {}
    for concept in concepts.values():
        for entry in concept.codes:
            key = (
                entry.system,
                entry.code.strip().replace(".", "").upper() if entry.system in dotless else entry.code,
            )
            index.setdefault(key, set()).add(concept.id)
        for system, prefix in raw_prefixes[concept.id]:
            norm = prefix.replace(".", "").upper() if system in dotless else prefix
            prefix_index.setdefault(system, []).append((norm, concept.id))
    final = {
        cid: (
            Concept(
                id=c.id,
                url=c.url,
                title=c.title,
                description=c.description,
                codes=c.codes,
                prefixes=tuple(raw_prefixes[cid]),
                text_pattern=c.text_pattern,
                survey_pattern=c.survey_pattern,
            )
        )
        for cid, c in concepts.items()
    }
    return Terminology(
        concepts=final,
        _canonical=canonical,
        _dotless=dotless,
        _index={k: frozenset(v) for k, v in index.items()},
        _prefix_index={k: tuple(v) for k, v in prefix_index.items()},
        _patterns=tuple((cid, c.text_pattern) for cid, c in sorted(final.items()) if c.text_pattern is not None),
        _extended=extended & dotless,
    )
