"""The cards themselves: a risk card per outcome with a tier, the screening card, or a notice — summary, detail,
source, links, override reasons, suggestions and the extension, assembled."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cds_service.contracts import EXTENSION_KEY, AssessmentExtension, CardType
from cds_service.core.cards.context import CardContext
from cds_service.core.cards.extension import assessment_extension
from cds_service.core.cards.facts import BMI, EXAMINE, Facts
from cds_service.core.cards.markdown import cell, escape_markdown, fit_summary
from cds_service.core.cards.orders import suggest
from cds_service.core.cards.tables import CardTemplates, compile_templates
from cds_service.core.i18n import SOURCE_LANGUAGE
from cds_service.core.knowledge import KnowledgeBase, Outcome
from cds_service.core.risk import Assessment, OutcomeAssessment
from fhir_mappings import Basis, State

_CARD_NAMESPACE = uuid.UUID("6f0c2d4e-5b1a-4c47-9a0e-2f7f4b1d9c33")


def render_cards(
    assessment: Assessment,
    knowledge: KnowledgeBase,
    context: CardContext,
    templates: CardTemplates | None = None,
) -> list[dict[str, Any]]:
    """The cards for one assessment: one per outcome with a tier, or the screening card, or a notice, or none.
    ``knowledge`` is the knowledge base in ``context.language``; ``templates`` its :func:`compile_templates` (made
    here when not given)."""
    renderer = _Renderer(assessment, knowledge, context, templates)
    if assessment.eligible:
        return [renderer.risk_card(o) for o in assessment.outcomes if o.tier is not None]
    if assessment.screening:
        return [renderer.screening_card()]
    if assessment.notice is not None:
        return [renderer.notice_card(assessment.notice)]
    return []


class _Renderer(Facts):
    """The cards of one assessment, in one language."""

    def __init__(
        self,
        assessment: Assessment,
        knowledge: KnowledgeBase,
        context: CardContext,
        templates: CardTemplates | None = None,
    ) -> None:
        language = context.language or SOURCE_LANGUAGE
        super().__init__(assessment, knowledge, language)
        self.context = context
        self.templates = templates or compile_templates(knowledge, language)

    def risk_card(self, result: OutcomeAssessment) -> dict[str, Any]:
        assert result.tier is not None
        outcome = self.kb.outcomes[result.outcome_id]
        template = self.words.outcomes[result.outcome_id].summary(result.tier)
        assert template is not None  # the knowledge base validator guarantees it
        return self._card(
            result.outcome_id,
            self._summary(template, result, outcome),
            self._risk_detail(result, outcome),
            result.tier,
            result.unknown,
            assessment_extension(self, result.outcome_id, result.tier, outcome.drivers),
        )

    def _summary(self, template: str, result: OutcomeAssessment, outcome: Outcome) -> str:
        """What to do, in under 140 characters: the predictors present, then the action (assess the findings
        nobody recorded, order the missing tests, review the abnormal results)."""
        words = self.words
        predictors = self.kb.predictors
        examine = [p for p in result.unknown if self.finding(p).basis in EXAMINE]
        order = [p for p in result.unknown if p not in examine and self.orders(p)]
        review = [p for p in result.present if predictors[p].order is not None]
        lists = {
            "present": [predictors[p].short for p in result.present],
            "assess": [predictors[p].act or predictors[p].short for p in examine],
            "order": [predictors[p].act or predictors[p].short for p in order],
            "review": [predictors[p].act or predictors[p].short for p in review],
        }

        def action(shortened: Mapping[str, str]) -> str:
            parts = [
                template_.format(items=shortened[key])
                for key, template_ in (
                    ("assess", words.action_assess),
                    ("order", words.action_order),
                    ("review", words.action_review),
                )
                if lists[key]
            ]
            return words.action_separator.join(parts) or words.action_none

        return fit_summary(
            template,
            lists,
            {
                "outcome": outcome.label,
                "outcome_short": outcome.short,
                "tier": words.indicator_labels[result.tier] if result.tier else "",
            },
            separator=words.list_separator,
            more=words.more,
            compose={"action": action},
        )

    def screening_card(self) -> dict[str, Any]:
        wording = self.words.screening
        missing = self.kb.eligibility.screening_requires_unknown
        pending = any(self.finding(p).basis is Basis.PENDING for p in missing)
        status = [
            self.words.status_line.format(label=self.kb.predictors[p].label, text=self.basis_text(self.finding(p), p))
            for p in missing
        ]
        return self._card(
            "screening",
            fit_summary(wording.summary_pending if pending else wording.summary, {}, {}),
            "\n\n".join([wording.detail, *status, self._closing()]),
            "info",
            missing,
            assessment_extension(self, None, "info", (), CardType.SCREENING),
        )

    def notice_card(self, notice: str) -> dict[str, Any]:
        wording = self.words.notices[notice]
        blocks = [wording.detail]
        basis = self.eligibility_basis()
        if basis:
            blocks.append(basis)
        blocks.append(self._closing())
        return self._card(
            notice,
            fit_summary(wording.summary, {}, {}),
            "\n\n".join(blocks),
            "info",
            (),
            assessment_extension(self, None, "info", (), CardType.NOTICE),
        )

    def _card(
        self,
        name: str,
        summary: str,
        detail: str,
        indicator: str,
        missing: Iterable[str],
        extension: AssessmentExtension,
    ) -> dict[str, Any]:
        card_uuid = self._uuid(name)
        card: dict[str, Any] = {
            "uuid": card_uuid,
            "summary": summary,
            "detail": detail,
            "indicator": indicator,
            "source": self._source(),
        }
        suggestions = suggest(self, self.context, card_uuid, missing)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        card["overrideReasons"] = self._override_reasons()
        links = self._links(name if name in self.kb.outcomes else None)
        if links:
            card["links"] = links
        card["extension"] = {EXTENSION_KEY: extension}
        return card

    def _uuid(self, name: str) -> str:
        return str(uuid.uuid5(_CARD_NAMESPACE, f"{self.context.hook_instance}/{name}"))

    def _source(self) -> dict[str, Any]:
        return {"label": self.kb.source.label, "url": self.kb.source.url}

    def _evidence_url(self, anchor: str | None) -> str | None:
        base = self.context.evidence_url
        if not base:
            return None
        url = f"{base}?lang={self.language}" if self.language != SOURCE_LANGUAGE else base
        return f"{url}#{anchor}" if anchor else url

    def _links(self, anchor: str | None) -> list[dict[str, Any]]:
        url = self._evidence_url(anchor)
        if url is None:
            return []
        label = self.words.link_label.format(heading=self.words.evidence_heading, source=self.kb.source.label)
        # CDS Hooks 2.0 spells it "autolaunchable"; HealthChain requires "autoLaunchable": both, never launched
        return [{"label": label, "url": url, "type": "absolute", "autolaunchable": False, "autoLaunchable": False}]

    def _override_reasons(self) -> list[dict[str, str]]:
        system = self.words.override_reason_system
        return [{"system": system, "code": r.code, "display": r.display} for r in self.words.override_reasons]

    def _risk_detail(self, result: OutcomeAssessment, outcome: Outcome) -> str:
        words = self.words
        compiled = self.templates.tables[result.outcome_id]
        table = [compiled.head]
        for predictor_id, name, rates, odds in compiled.rows:
            patient = cell(self.patient_cell(self.finding(predictor_id), predictor_id))
            table.append(f"| {name} | {patient} | {rates} | {odds} |")
        blocks = [f"{words.outcomes[result.outcome_id].intro} {self.eligibility_basis()}".strip(), "\n".join(table)]
        blocks.extend(compiled.footnotes)  # each its own paragraph: CommonMark joins single newlines
        if BMI in outcome.drivers and self.finding(BMI).state is not State.UNKNOWN:
            blocks.append(self.bmi_context())
        others = [r.predictor for r in outcome.rows if r.predictor and r.predictor not in outcome.drivers]
        examine = [p for p in (*result.unknown, *others) if self.finding(p).basis in EXAMINE]
        if examine:
            items = words.list_separator.join(self.kb.predictors[p].act or self.kb.predictors[p].short for p in examine)
            blocks.append(words.heading_line.format(heading=words.examine_heading, items=items))
        blocks.append(self._closing(result.outcome_id))
        return "\n\n".join(blocks)

    def _closing(self, anchor: str | None = None) -> str:
        """One line of caveat, the link to the evidence page, and which knowledge base and language spoke."""
        source = self.kb.source
        url = self._evidence_url(anchor)
        link = f" [{self.words.evidence_link}]({url})" if url else ""
        produced = self.words.produced_by.format(
            kb_label=source.id, kb_version=source.version, language=self.words.language_name
        )
        return f"{source.caveat_short or source.caveat}{link}\n\n_{escape_markdown(produced)}_"
