"""The pure core, assembled: resources → findings → assessment → cards.

An :class:`Engine` is built once at start-up (knowledge base and value sets loaded, validated and compiled) and
is then used read-only by every request and by the command line, so the HTTP service and ``nxp2-cds evaluate``
run exactly the same code. It does no I/O after construction and never reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cds_service.core.cards import CardContext, CardTemplates, compile_templates, render_cards
from cds_service.core.growth import load_references
from cds_service.core.i18n import SOURCE_LANGUAGE, LanguageError, available_languages, translate_knowledge
from cds_service.core.knowledge import KnowledgeBase, KnowledgeError, load_knowledge
from cds_service.core.risk import Assessment, assess
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


class Engine:
    def __init__(self, knowledge: KnowledgeBase, terminology: Terminology, language: str = SOURCE_LANGUAGE) -> None:
        knowledge.check_terminology(terminology)
        self.knowledge = knowledge
        self.languages: tuple[str, ...] = available_languages()
        if language not in self.languages:
            raise KnowledgeError(f"[cards] language {language!r}: no message catalog (available: {self.languages})")
        self.language = language
        """The site's default language."""
        try:
            self.translated: dict[str, KnowledgeBase] = {
                lang: translate_knowledge(knowledge, lang) for lang in self.languages
            }
        except (LanguageError, ValueError) as exc:
            raise KnowledgeError(f"message catalogs: {exc}") from exc
        """The knowledge base in every language, made once at start-up."""
        self.card_templates: dict[str, CardTemplates] = {
            lang: compile_templates(kb, lang) for lang, kb in self.translated.items()
        }
        """What the cards take from the knowledge base alone, per language, made once."""
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
        load_references()  # the WHO growth tables (BMI for age), once per process

    def knowledge_for(self, language: str | None) -> KnowledgeBase:
        """The knowledge base in ``language`` (the site's default when ``None`` or unsupported)."""
        return self.translated.get(language or self.language, self.translated[self.language])

    @classmethod
    def load(
        cls,
        knowledge_file: Path | None = None,
        local_codes: Mapping[str, list[str]] | None = None,
        valueset_dir: Path | None = None,
        language: str = SOURCE_LANGUAGE,
    ) -> Engine:
        """Load and validate everything; raises :class:`KnowledgeError` naming the file and field."""
        knowledge = load_knowledge(knowledge_file)
        try:
            terminology = load_terminology(
                valueset_dir, local_codes=knowledge.local_code_targets(dict(local_codes or {}))
            )
        except TerminologyError as exc:
            raise KnowledgeError(str(exc)) from exc
        return cls(knowledge, terminology, language)

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
        """The cards in ``context.language`` (the site's default when that has no catalog)."""
        language = context.language if context.language in self.translated else self.language
        if language != context.language:
            context = replace(context, language=language)
        assert language is not None
        return render_cards(assessment, self.translated[language], context, self.card_templates[language])
