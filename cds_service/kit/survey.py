"""What ``nxp2-cds mappings survey`` finds on a FHIR server: the pure part (resources in, a result out).

An integration team runs the survey once per site. It reads the codes of the server's Observations (and their
components) and Conditions and sorts each into one of three heaps:

- **mapped**: a coding already belongs to a value set a predictor rule uses (shipped codes, or the site's
  ``[mappings.local_codes]``): counted per concept, to show the coverage;
- **unmapped but looks like a predictor**: no coding is mapped, and the code's text or a coding's display matches
  a predictor concept's ``text-pattern`` or ``survey-pattern`` (``fhir_mappings/valuesets``): listed with counts,
  and offered as a ``[mappings.local_codes]`` line;
- everything else: ignored.

Which concepts count: only the value sets the predictor rules read, and for each resource type only those the
service reads from it (the discovery templates do the same): Conditions for finding predictors (JDM, edema, skin
ulcer, bulbar weakness, ILD), Observations for all others and for finding Observations. A name that looks like
several concepts goes to the one whose pattern matches the longest stretch of it ("CD4/CD8 ratio" is the ratio,
not CD4); a tie, or an antibody code whose name looks like a multi-antibody panel (a panel's own result never
counts for one antibody), is shown but left commented out in the snippet, for a person to decide.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cds_service.core.knowledge import KnowledgeBase
from fhir_mappings import AntibodyRule, FindingRule, Terminology
from fhir_mappings.terminology import codeable_texts

Json = dict[str, Any]
OBSERVATION = "Observation"
COMPONENT = "Observation.component"
CONDITION = "Condition"
PANEL_CONCEPT = "antibody-panel"
NXP2_CONCEPT = "anti-nxp2"
_PLURAL = {OBSERVATION: "Observations", COMPONENT: "Observation components", CONDITION: "Conditions"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NAME_WIDTH = 60
_CODES_SHOWN = 4
_WRAP = 110


@dataclass(frozen=True, slots=True)
class Target:
    """A value set some predictor rule reads, and the ``[mappings.local_codes]`` key that adds codes to it."""

    concept: str
    key: str
    """The predictor id when the concept is that predictor's first value set, else the value set id."""
    predictors: tuple[str, ...]
    antibody: bool

    def label(self) -> str:
        return f"{self.concept} ({', '.join(self.predictors)})"


@dataclass(frozen=True, slots=True)
class Suggestion:
    """An unmapped code whose name looks like a predictor concept, with how often the server holds it."""

    target: Target
    resource_type: str
    system: str | None
    code: str | None
    name: str
    count: int
    recognised_by_name: bool
    """The service already reads it by its name (a ``text-pattern``: anti-NXP2, Ro52) once it has the resource."""
    also_matches: tuple[str, ...] = ()
    review: str | None = None
    """Why the snippet leaves this line commented out (ambiguous concept, looks like a panel); None: active."""

    @property
    def token(self) -> str | None:
        """``system|code`` for ``[mappings.local_codes]``, or None when the coding cannot be written so."""
        if not self.system or not self.code or "|" in self.system:
            return None
        system, code = self.system.strip(), self.code.strip()
        return f"{system}|{code}" if system and code else None

    @property
    def in_snippet(self) -> bool:
        return self.token is not None and self.review is None

    def notes(self) -> list[str]:
        notes: list[str] = []
        if self.token is None:
            notes.append(
                "no code, only a name: cannot be mapped"
                if not self.code
                else "a coding without a usable system: cannot be mapped as system|code"
            )
        if self.review is not None:
            notes.append(self.review)
        if self.recognised_by_name:
            what = "anti-NXP2 result" if self.target.concept == NXP2_CONCEPT else "result"
            notes.append(
                f"recognised by its name already; mapping the local code lets the discovery templates (and the "
                f"service's fallback) fetch this {what} by code"
                if self.token is not None
                else f"recognised by its name once the service has the resource; with no code, only a search by "
                f"category or by name can fetch this {what}"
            )
        return notes


@dataclass(frozen=True, slots=True)
class Coverage:
    """Resources whose code is already mapped to a concept, and which codes they used."""

    target: Target
    count: int
    codes: tuple[tuple[str, int], ...]
    """``(system|code, count)``, most frequent first."""


@dataclass(frozen=True, slots=True)
class SearchReport:
    """One search the survey ran and how far it got."""

    query: str
    pages: int
    resources: int
    total: int | None = None
    """What the server said its search matched (``Bundle.total``), when it said."""
    stopped: str | None = None
    """Why the search stopped before its last page (the page bound, a failure on a later page); None: complete."""

    @property
    def complete(self) -> bool:
        return self.stopped is None


@dataclass(frozen=True)
class SurveyResult:
    server: str
    patients: tuple[str, ...]
    searches: tuple[SearchReport, ...]
    suggestions: tuple[Suggestion, ...]
    coverage: tuple[Coverage, ...]
    not_found: tuple[Target, ...]
    configured: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The site's ``[mappings.local_codes]`` at the time of the survey (kept in the snippet)."""

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.searches)

    # -- the snippet ---------------------------------------------------------------------------------
    def snippet(self) -> str:
        """The ``[mappings.local_codes]`` section to paste: the codes already configured plus the new ones (valid
        TOML; lines a person must decide on are comments)."""
        scope = f"patients {', '.join(self.patients)}" if self.patients else "the whole server"
        lines = [
            f"# From `nxp2-cds mappings survey` of {_comment(self.server)} ({_comment(scope)}).",
            "# Replace the [mappings.local_codes] section of the site configuration (NXP2_CDS_CONFIG) with this one:",
            "# it keeps the codes already configured. Check every new line against the laboratory's catalogue.",
            "[mappings.local_codes]",
        ]
        order = list(dict.fromkeys([s.target.key for s in self.suggestions] + list(self.configured)))
        new: dict[str, dict[str, list[Suggestion]]] = {}
        for s in self.suggestions:
            if s.in_snippet and s.token is not None:
                new.setdefault(s.target.key, {}).setdefault(s.token, []).append(s)
        written = False
        for key in order:
            existing = self.configured.get(key, ())
            added = {tok: rows for tok, rows in new.get(key, {}).items() if tok not in existing}
            if not existing and not added:
                continue
            written = True
            lines.append(f"{key} = [")
            lines.extend(f"    {_toml_string(tok)},  # already configured" for tok in existing)
            for tok, rows in added.items():
                lines.append(f"    {_toml_string(tok)},  # {_comment(_describe(rows))}")
            lines.append("]")
        review = [s for s in self.suggestions if s.token is not None and s.review is not None]
        if review:
            lines += ["", "# To decide (not active): uncomment under the right key, or leave out."]
            for s in review:
                assert s.token is not None
                lines.append(f"# {s.target.key} = [{_toml_string(s.token)}]  # {_comment(_describe([s]))}")
                lines.extend(f"#   {part}" for part in textwrap.wrap(_comment(s.review or ""), _WRAP))
        if not written and not review:
            lines.append("# nothing to add: no unmapped code on this server looks like a predictor")
        return "\n".join(lines) + "\n"

    # -- output --------------------------------------------------------------------------------------
    def to_json(self) -> Json:
        return {
            "fhirServer": self.server,
            "patients": list(self.patients),
            "complete": self.complete,
            "searches": [
                {
                    "query": s.query,
                    "pages": s.pages,
                    "resources": s.resources,
                    "total": s.total,
                    "complete": s.complete,
                    "stopped": s.stopped,
                }
                for s in self.searches
            ],
            "unmapped": [
                {
                    "concept": s.target.concept,
                    "key": s.target.key,
                    "predictors": list(s.target.predictors),
                    "resourceType": s.resource_type,
                    "system": s.system,
                    "code": s.code,
                    "token": s.token,
                    "name": s.name,
                    "count": s.count,
                    "recognisedByName": s.recognised_by_name,
                    "alsoMatches": list(s.also_matches),
                    "inSnippet": s.in_snippet,
                    "notes": s.notes(),
                }
                for s in self.suggestions
            ],
            "mapped": [
                {
                    "concept": c.target.concept,
                    "key": c.target.key,
                    "predictors": list(c.target.predictors),
                    "count": c.count,
                    "codes": [{"token": token, "count": n} for token, n in c.codes],
                }
                for c in self.coverage
            ],
            "notFound": [
                {"concept": t.concept, "key": t.key, "predictors": list(t.predictors)} for t in self.not_found
            ],
            "snippet": self.snippet(),
        }

    def render(self) -> str:
        """The readable report: what was searched, the unmapped codes, the coverage, the gaps, the snippet."""
        scope = f"patients {', '.join(self.patients)}" if self.patients else "the whole server"
        out = [f"nxp2-cds mappings survey of {self.server} ({scope})", "", "Searched:"]
        for s in self.searches:
            of = f" of {s.total}" if s.total is not None else ""
            pages = f"{s.pages} page{'s' if s.pages != 1 else ''}"
            out.append(f"  {s.query}  {pages}, {s.resources}{of} resources{'' if s.complete else ' (INCOMPLETE)'}")
        for s in self.searches:
            if s.stopped is not None:
                out.append(
                    f"WARNING: incomplete: {s.query} {s.stopped}; the counts cover only what was read. Survey "
                    "patients one by one (--patient ID) or raise the bound (NXP2_CDS_FHIR__MAX_PAGES, "
                    "NXP2_CDS_FHIR__DEADLINE_SECONDS)."
                )
        out += ["", f"Unmapped codes whose names look like a predictor: {len(self.suggestions)}"]
        if self.suggestions:
            out.extend(_table(self.suggestions))
        out += ["", "Mapped codes found:"]
        for c in self.coverage:
            shown = ", ".join(f"{token} x{n}" for token, n in c.codes[:_CODES_SHOWN])
            more = f", and {len(c.codes) - _CODES_SHOWN} more" if len(c.codes) > _CODES_SHOWN else ""
            out.append(f"  {c.target.label()}: {c.count} ({shown}{more})")
        if not self.coverage:
            out.append("  none")
        out += ["", "Nothing found (neither mapped nor by name):"]
        out.extend(f"  {t.label()}: no code found on this server" for t in self.not_found)
        if not self.not_found:
            out.append("  none: every predictor concept has a mapped code or a candidate above")
        out += ["", "The [mappings.local_codes] section to use:", "", self.snippet()]
        return "\n".join(out)


_RowKey = tuple[str, str | None, str | None, str, str]
"""``(resource type, system, code, name, concept)``: what the survey counts."""
_RowInfo = tuple[bool, tuple[str, ...], str | None]
"""``(recognised by name, other concepts the name looks like, why a person must decide)``."""


class Survey:
    """Counts the codes of the resources it is given; :meth:`result` sorts them into the three heaps."""

    def __init__(
        self,
        knowledge: KnowledgeBase,
        terminology: Terminology,
        configured: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.terminology = terminology
        self.configured = {k: tuple(v) for k, v in (configured or {}).items()}
        predictors: dict[str, list[str]] = {}
        first: dict[str, str] = {}
        antibody: set[str] = set()
        observation: set[str] = set()
        condition: set[str] = set()
        for pid, predictor in knowledge.predictors.items():
            rule = predictor.rule
            first.setdefault(rule.valuesets[0], pid)
            for concept in rule.concepts():
                predictors.setdefault(concept, [])
                if pid not in predictors[concept]:
                    predictors[concept].append(pid)
                if isinstance(rule, AntibodyRule):
                    antibody.add(concept)
                if isinstance(rule, FindingRule):
                    condition.add(concept)
                if not isinstance(rule, FindingRule) or rule.observations:
                    observation.add(concept)
        self.targets: dict[str, Target] = {
            concept: Target(concept, first.get(concept, concept), tuple(pids), concept in antibody)
            for concept, pids in predictors.items()
            if concept in terminology.concepts
        }
        self._wanted = {
            OBSERVATION: frozenset(observation) & frozenset(self.targets),
            COMPONENT: frozenset(observation) & frozenset(self.targets),
            CONDITION: frozenset(condition) & frozenset(self.targets),
        }
        self._all = frozenset(self.targets)
        panel = terminology.concepts.get(PANEL_CONCEPT)
        self._panel = panel.text_pattern if panel is not None else None
        self._seen: set[tuple[str, str]] = set()
        self._rows: Counter[_RowKey] = Counter()
        self._row_info: dict[_RowKey, _RowInfo] = {}
        self._mapped: dict[str, Counter[str]] = {}
        self._mapped_count: Counter[str] = Counter()

    # -- input ---------------------------------------------------------------------------------------
    def add_bundle(self, bundle: Json) -> int:
        """Count a search Bundle's Observations and Conditions; the number of resources counted."""
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            return 0
        return sum(self.add(e.get("resource")) for e in entries if isinstance(e, dict))

    def add(self, resource: object) -> bool:
        """Count one resource's codes (an Observation's components too); False when it is not counted (another
        resource type, or a resource already counted)."""
        if not isinstance(resource, dict):
            return False
        kind = resource.get("resourceType")
        if kind not in (OBSERVATION, CONDITION):
            return False
        rid = resource.get("id")
        if isinstance(rid, str):
            if (kind, rid) in self._seen:
                return False
            self._seen.add((kind, rid))
        if kind == CONDITION:
            self._codeable(CONDITION, resource.get("code"))
            return True
        self._codeable(OBSERVATION, resource.get("code"))
        components = resource.get("component")
        if isinstance(components, list):
            for component in components:
                if isinstance(component, dict):
                    self._codeable(COMPONENT, component.get("code"))
        return True

    def add_all(self, resources: Iterable[object]) -> int:
        return sum(self.add(r) for r in resources)

    def _codeable(self, kind: str, codeable: object) -> None:
        if not isinstance(codeable, dict):
            return
        raw = codeable.get("coding")
        codings = [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []
        mapped: set[str] = set()
        tokens: list[str] = []
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            hit = self.terminology.concepts_for(system, code) & self._all
            if hit:
                mapped |= hit
                tokens.append(f"{system}|{code}")
        if mapped:
            for concept in mapped & self._wanted[kind]:
                self._mapped_count[concept] += 1
                self._mapped.setdefault(concept, Counter()).update(dict.fromkeys(tokens, 1))
            return
        names = [n for n in (_clean(t) for t in codeable_texts(codeable)) if n]
        spans: dict[str, int] = {}
        for name in names:
            for concept in self.terminology.survey_concepts_for_text(name) & self._wanted[kind]:
                spans[concept] = max(spans.get(concept, 0), self._span(concept, name))
        if not spans:
            return
        best = max(spans.values())
        tied = sorted(c for c, span in spans.items() if span == best)
        concept = tied[0]
        also = tuple(sorted(set(spans) - {concept}))
        review: str | None = None
        if len(tied) > 1:
            review = f"the name fits {' and '.join(tied)} equally: put it under the right key"
        elif self.targets[concept].antibody and kind != COMPONENT and self._looks_like_panel(names):
            review = (
                "the name looks like a multi-antibody panel: a panel's own result never counts for one antibody, so "
                "map the antibody's component code instead (or uncomment if this code is the single test)"
            )
        recognised = any(self.terminology.text_matches(concept, n) for n in names)
        text = _clean(codeable.get("text")) if isinstance(codeable.get("text"), str) else ""
        for coding in codings or [{}]:
            system, code = coding.get("system"), coding.get("code")
            display = _clean(coding.get("display")) if isinstance(coding.get("display"), str) else ""
            key = (
                kind,
                system if isinstance(system, str) else None,
                code if isinstance(code, str) else None,
                display or text,
                concept,
            )
            self._rows[key] += 1
            self._row_info.setdefault(key, (recognised, also, review))

    def _span(self, concept: str, name: str) -> int:
        """How much of the name the concept's patterns match (the longest match decides between concepts)."""
        found = self.terminology.concepts[concept]
        best = 0
        for pattern in (found.text_pattern, found.survey_pattern):
            match = pattern.search(name) if pattern is not None else None
            if match is not None:
                best = max(best, match.end() - match.start())
        return best

    def _looks_like_panel(self, names: Sequence[str]) -> bool:
        return self._panel is not None and any(self._panel.search(n) for n in names)

    # -- output --------------------------------------------------------------------------------------
    def result(self, server: str, searches: Sequence[SearchReport], patients: Sequence[str] = ()) -> SurveyResult:
        order = {concept: i for i, concept in enumerate(self.targets)}
        suggestions = sorted(
            (
                Suggestion(
                    target=self.targets[concept],
                    resource_type=kind,
                    system=system,
                    code=code,
                    name=name,
                    count=count,
                    recognised_by_name=self._row_info[(kind, system, code, name, concept)][0],
                    also_matches=self._row_info[(kind, system, code, name, concept)][1],
                    review=self._row_info[(kind, system, code, name, concept)][2],
                )
                for (kind, system, code, name, concept), count in self._rows.items()
            ),
            key=lambda s: (order[s.target.concept], -s.count, s.resource_type, s.system or "", s.code or "", s.name),
        )
        coverage = tuple(
            Coverage(
                self.targets[concept],
                self._mapped_count[concept],
                tuple(sorted(self._mapped[concept].items(), key=lambda item: (-item[1], item[0]))),
            )
            for concept in self.targets
            if self._mapped_count[concept]
        )
        candidates = {s.target.concept for s in suggestions}
        not_found = tuple(
            t for concept, t in self.targets.items() if not self._mapped_count[concept] and concept not in candidates
        )
        return SurveyResult(
            server=server,
            patients=tuple(patients),
            searches=tuple(searches),
            suggestions=tuple(suggestions),
            coverage=coverage,
            not_found=not_found,
            configured=self.configured,
        )


# -- helpers -------------------------------------------------------------------------------------------


def _clean(text: object) -> str:
    """A name fit for one line: control characters (newlines included) become spaces, runs of spaces one."""
    if not isinstance(text, str):
        return ""
    return " ".join(_CONTROL.sub(" ", text).split())


def _comment(text: str) -> str:
    """Text that is safe inside a TOML comment (no control characters, so no line break)."""
    return _clean(text)


def _describe(rows: Sequence[Suggestion]) -> str:
    names = list(dict.fromkeys(s.name for s in rows if s.name))
    counts: Counter[str] = Counter()
    for s in rows:
        counts[s.resource_type] += s.count
    where = ", ".join(f"{n} {kind if n == 1 else _PLURAL.get(kind, kind)}" for kind, n in counts.items())
    return f"{' / '.join(names) or '(no name)'}: {where}"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(suggestions: Sequence[Suggestion]) -> list[str]:
    header = ("CONCEPT", "KEY", "COUNT", "RESOURCE", "CODE", "NAME")
    rows = [
        (
            s.target.concept,
            s.target.key,
            str(s.count),
            s.resource_type,
            s.token or (f"{s.system or '(no system)'}|{s.code}" if s.code else "(no code)"),
            _cut(s.name or "(no name)", _NAME_WIDTH),
        )
        for s in suggestions
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [cell.rjust(widths[i]) if i == 2 else cell.ljust(widths[i]) for i, cell in enumerate(cells)]
        return ("  " + "  ".join(parts)).rstrip()

    out = [line(header)]
    indent = " " * (2 + widths[0] + 2)
    for s, row in zip(suggestions, rows, strict=True):
        out.append(line(row))
        if s.also_matches:
            out.append(f"{indent}also looks like: {', '.join(s.also_matches)}")
        for note in s.notes():
            out.extend(
                textwrap.wrap(note, _WRAP, initial_indent=f"{indent}note: ", subsequent_indent=f"{indent}      ")
            )
    return out
