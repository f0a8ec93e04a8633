"""The pure core, assembled: resources → findings → assessment → cards.

An :class:`Engine` is built once at start-up (knowledge base and value sets loaded, validated and compiled) and
is then used read-only by every request and by the command line, so the HTTP service and ``nxp2-cds evaluate``
run exactly the same code. It does no I/O after construction and never reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fhir_mappings import (
    FindingRule,
    MappingRules,
    Reader,
    Terminology,
    TerminologyError,
    UnitConverter,
    load_terminology,
)
from fhir_mappings.units import warm_up

from .cards import CardContext, render_cards
from .knowledge import KnowledgeBase, KnowledgeError, load_knowledge
from .risk import Assessment, assess


class Engine:
    def __init__(self, knowledge: KnowledgeBase, terminology: Terminology) -> None:
        knowledge.check_terminology(terminology)
        self.knowledge = knowledge
        self.terminology = terminology
        self.rules: MappingRules = knowledge.mapping_rules()
        self.units = UnitConverter(self.rules.data.unit_aliases)
        self.reader = Reader(terminology, self.rules, units=self.units)
        eligibility = knowledge.eligibility
        self.gate: tuple[str, ...] = tuple(
            dict.fromkeys(
                [
                    *eligibility.requires_present,
                    *eligibility.screening_requires_present,
                    *eligibility.screening_requires_unknown,
                ]
            )
        )
        """The predictors that decide whether any card is possible: evaluated first (the early exit)."""
        warm_up()

    @classmethod
    def load(
        cls,
        knowledge_file: Path | None = None,
        local_codes: Mapping[str, list[str]] | None = None,
        valueset_dir: Path | None = None,
    ) -> Engine:
        """Load and validate everything; raises :class:`KnowledgeError` naming the file and field."""
        knowledge = load_knowledge(knowledge_file)
        try:
            terminology = load_terminology(
                valueset_dir, local_codes=knowledge.local_code_targets(dict(local_codes or {}))
            )
        except TerminologyError as exc:
            raise KnowledgeError(str(exc)) from exc
        return cls(knowledge, terminology)

    def unmapped_by_code(self) -> dict[str, str]:
        """Predictors read from Observations whose value sets hold no code at all (not even a site's local code):
        ``by-name`` when a text pattern still recognises them (anti-NXP2, through the ``laboratory`` prefetch
        template), ``not-recognised`` when nothing can (muscle grade: no standard code exists)."""
        out: dict[str, str] = {}
        for pid, rule in self.rules.predictors.items():
            if isinstance(rule, FindingRule):
                continue
            concepts = [self.terminology.concepts[c] for c in rule.valuesets]
            if any(c.codes for c in concepts):
                continue
            out[pid] = "by-name" if any(c.text_pattern for c in concepts) else "not-recognised"
        return out

    def assess(self, resources: Iterable[object], *, patient_id: str, at: datetime) -> Assessment:
        """Read the chart once; evaluate the eligibility predictors first, and the others only when a card is
        possible (most charts: not anti-NXP2 positive, no JDM, so no card and nothing more to do)."""
        chart = self.reader.read(resources, patient_id=patient_id, at=at)
        first = assess(chart.findings(self.gate), self.knowledge)
        if not (first.eligible or first.screening or first.notice):
            return first
        return assess(chart.findings(), self.knowledge)

    def cards(self, assessment: Assessment, context: CardContext) -> list[dict[str, Any]]:
        return render_cards(assessment, self.knowledge, context)
