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
    MappingRules,
    Terminology,
    TerminologyError,
    UnitConverter,
    extract_findings,
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

    def assess(self, resources: Iterable[object], *, patient_id: str, at: datetime) -> Assessment:
        findings = extract_findings(
            resources,
            patient_id=patient_id,
            at=at,
            terminology=self.terminology,
            rules=self.rules,
            units=self.units,
        )
        return assess(findings, self.knowledge)

    def cards(self, assessment: Assessment, context: CardContext) -> list[dict[str, Any]]:
        return render_cards(assessment, self.knowledge, context)
