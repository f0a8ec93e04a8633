"""Assessment → CDS Hooks 2.0 cards (plain JSON-ready dicts). Pure: no I/O, no clock, no randomness.

A card is read in ten seconds: the summary says what to do ("assess swallowing/voice; order CD4/CD8"), the detail is
about 1,200 characters of markdown — why the card applies (the anti-NXP2 result, the diagnosis, the age), one table
row per predictor (this child's state and value as reported, with its date; the cohort's rate with vs without; OR
and P), the footnotes as separate paragraphs, what to examine at this visit, one line of caveat and a link to the
evidence page, where the method, the paper's defects and the long notes live.

Card and suggestion uuids are UUIDv5 of the hook instance, so the same request always yields the same cards and
feedback can be tied back to them. Every word comes from the knowledge base's ``[wording]``, already in the card's
language (see :mod:`cds_service.core.i18n`); numbers and dates are formatted for that language, the paper's printed
estimates never. Values that come from the patient's record are escaped before they enter markdown.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.contracts import (
    EXTENSION_KEY,
    EXTENSION_VERSION,
    PREDICTOR_IDS,
    AssessmentExtension,
    CardType,
    PredictorJson,
    Tier,
)
from cds_service.core.growth import bmi_for_age
from cds_service.core.i18n import SOURCE_LANGUAGE, Formatter
from cds_service.core.knowledge import KnowledgeBase, Outcome
from cds_service.core.risk import Assessment, OutcomeAssessment
from fhir_mappings import Basis, PatientFindings, PredictorFinding, Source, State

SUMMARY_MAX = 139
"""CDS Hooks: "one-sentence, <140-character summary"."""
_CARD_NAMESPACE = uuid.UUID("6f0c2d4e-5b1a-4c47-9a0e-2f7f4b1d9c33")
_MARKDOWN_SPECIAL = "\\`*_{}[]()#+!|~"
_HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPES = str.maketrans({**{ch: "\\" + ch for ch in _MARKDOWN_SPECIAL}, **_HTML_SPECIAL})
"""One pass (``str.translate``): the HTML specials as entities (which hold no markdown special), each markdown special
behind a backslash."""
_SUPERSCRIPTS = ("¹", "²", "³", "⁴", "⁵", "⁶", "⁷", "⁸", "⁹")
_EXAMINE = frozenset({Basis.NOT_RECORDED, Basis.SUSPECTED})
"""Clinical findings nobody recorded either way: the card asks the clinician to examine for them now."""
_NO_REORDER = frozenset({Basis.PENDING})
"""A result on its way: no repeat order is suggested."""
_BMI = "bmi_lt_15"


@dataclass(frozen=True, slots=True)
class CardContext:
    """What the cards need from the request besides the assessment."""

    hook_instance: str
    patient_id: str
    user_id: str | None = None
    evidence_url: str | None = None
    """Absolute URL of the service's evidence page; when given, every card links to it."""
    language: str | None = None
    """The cards' language (a BCP 47 tag; ``None``: the site's default, which the engine fills in)."""


@dataclass(frozen=True, slots=True)
class _Table:
    """An outcome's predictor table without the patient: the header lines, per row the predictor's name, the
    cohort's rates and OR/P (with their footnote markers), and the footnotes."""

    head: str
    rows: tuple[tuple[str, str, str, str], ...]
    """(predictor id, name, rates, odds), the cells already escaped for a table."""
    footnotes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CardTemplates:
    """What every card in one language takes from the knowledge base alone, made once (at start-up, by the engine)
    instead of on every call."""

    tables: Mapping[str, _Table]


def compile_templates(knowledge: KnowledgeBase, language: str | None = None) -> CardTemplates:
    """The card templates of ``knowledge`` (already in ``language``)."""
    words = knowledge.wording
    fmt = Formatter(language or SOURCE_LANGUAGE)
    tables: dict[str, _Table] = {}
    for outcome_id, outcome in knowledge.outcomes.items():
        headers = [h.format(outcome_short=outcome.short) for h in words.table_headers]
        head = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers)
        rows: list[tuple[str, str, str, str]] = []
        footnotes: list[str] = []
        for predictor_id in outcome.drivers:
            row = outcome.row_for(predictor_id)
            assert row is not None  # validated: every driver has a row
            predictor = knowledge.predictors[predictor_id]
            rates = words.rates.format(exposed=fmt.percent(row.exposed.rate), reference=fmt.percent(row.reference.rate))
            marker = ""
            if row.zero_cell and row.p_two_sided:
                marker = _SUPERSCRIPTS[len(footnotes) % len(_SUPERSCRIPTS)]
                footnotes.append(
                    words.one_sided_footnote.format(
                        marker=marker, predictor=predictor.short, p_two_sided=_p_with_relation(row.p_two_sided)
                    )
                )
            odds = words.odds.format(odds_ratio=row.published.odds_ratio, p=f"{row.published.p}{marker}")
            rows.append((predictor_id, _cell(predictor.short), _cell(rates), _cell(odds)))
        tables[outcome_id] = _Table(head, tuple(rows), tuple(footnotes))
    return CardTemplates(tables)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


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


def escape_markdown(text: str) -> str:
    """Make untrusted text inert inside GitHub-flavoured markdown (and a table cell)."""
    return " ".join(text.split()).translate(_ESCAPES)


def fit_summary(
    template: str,
    lists: Mapping[str, Sequence[str]],
    values: Mapping[str, object],
    *,
    separator: str = ", ",
    more: str = " +{n} more",
    compose: Mapping[str, Any] | None = None,
) -> str:
    """Fill ``template``; while the result is 140 characters or more, show fewer list items (``a, b +2 more``),
    and as a last resort cut the text with an ellipsis. ``compose`` maps a placeholder to a function of the
    shortened lists (the summary's action: "assess edema, ulcer; order CD4/CD8")."""
    longest = max((len(v) for v in lists.values()), default=0)
    text = template
    for shown in range(longest, -1, -1):
        rendered = {name: _short_list(items, shown, separator, more) for name, items in lists.items()}
        composed = {name: build(rendered) for name, build in (compose or {}).items()}
        text = template.format(**rendered, **composed, **values)
        if len(text) <= SUMMARY_MAX:
            return text
    return text[: SUMMARY_MAX - 1].rstrip() + "…"


def _short_list(items: Sequence[str], shown: int, separator: str = ", ", more: str = " +{n} more") -> str:
    if len(items) <= shown:
        return separator.join(items)
    if shown == 0:
        return str(len(items))
    return separator.join(items[:shown]) + more.format(n=len(items) - shown)


class _Renderer:
    def __init__(
        self,
        assessment: Assessment,
        knowledge: KnowledgeBase,
        context: CardContext,
        templates: CardTemplates | None = None,
    ) -> None:
        self.assessment = assessment
        self.findings: PatientFindings = assessment.findings
        self.kb = knowledge
        self.words = knowledge.wording
        self.context = context
        self.language = context.language or SOURCE_LANGUAGE
        self.fmt = Formatter(self.language)
        self.templates = templates or compile_templates(knowledge, self.language)

    # -- cards ---------------------------------------------------------------------------------------
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
            self._extension(result.outcome_id, result.tier, outcome.drivers),
        )

    def _summary(self, template: str, result: OutcomeAssessment, outcome: Outcome) -> str:
        """What to do, in under 140 characters: the predictors present, then the action (assess the findings
        nobody recorded, order the missing tests, review the abnormal results)."""
        words = self.words
        predictors = self.kb.predictors
        examine = [p for p in result.unknown if self._finding(p).basis in _EXAMINE]
        order = [p for p in result.unknown if p not in examine and self._orders(p)]
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
        pending = any(self._finding(p).basis == "pending" for p in missing)
        status = [
            self.words.status_line.format(label=self.kb.predictors[p].label, text=self._basis_text(self._finding(p), p))
            for p in missing
        ]
        return self._card(
            "screening",
            fit_summary(wording.summary_pending if pending else wording.summary, {}, {}),
            "\n\n".join([wording.detail, *status, self._closing()]),
            "info",
            missing,
            self._extension(None, "info", (), CardType.SCREENING),
        )

    def notice_card(self, notice: str) -> dict[str, Any]:
        wording = self.words.notices[notice]
        blocks = [wording.detail]
        basis = self._eligibility_basis()
        if basis:
            blocks.append(basis)
        blocks.append(self._closing())
        return self._card(
            notice,
            fit_summary(wording.summary, {}, {}),
            "\n\n".join(blocks),
            "info",
            (),
            self._extension(None, "info", (), CardType.NOTICE),
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
        suggestions = self._suggestions(card_uuid, missing)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        card["overrideReasons"] = self._override_reasons()
        links = self._links(name if name in self.kb.outcomes else None)
        if links:
            card["links"] = links
        card["extension"] = {EXTENSION_KEY: extension}
        return card

    # -- parts ---------------------------------------------------------------------------------------
    def _finding(self, predictor_id: str) -> PredictorFinding:
        found = self.findings.predictors.get(predictor_id)
        return found if found is not None else PredictorFinding(id=predictor_id, state=State.UNKNOWN)

    def _orders(self, predictor_id: str) -> bool:
        return self.kb.predictors[predictor_id].order is not None and self._finding(predictor_id).basis not in (
            _NO_REORDER
        )

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
            patient = _cell(self._patient_cell(self._finding(predictor_id), predictor_id))
            table.append(f"| {name} | {patient} | {rates} | {odds} |")
        blocks = [f"{words.outcomes[result.outcome_id].intro} {self._eligibility_basis()}".strip(), "\n".join(table)]
        blocks.extend(compiled.footnotes)  # each its own paragraph: CommonMark joins single newlines
        if _BMI in outcome.drivers and self._finding(_BMI).state is not State.UNKNOWN:
            blocks.append(self._bmi_context())
        others = [r.predictor for r in outcome.rows if r.predictor and r.predictor not in outcome.drivers]
        examine = [p for p in (*result.unknown, *others) if self._finding(p).basis in _EXAMINE]
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

    def _bmi_context(self) -> str:
        """BMI for age (WHO) beside the paper's absolute cut-off: context, never the rule."""
        finding = self._finding(_BMI)
        measured = finding.effective
        bmi = finding.value if isinstance(finding.value, float) else None
        rule = self.kb.predictors[_BMI].rule
        growth = bmi_for_age(
            self.findings.sex,
            self.findings.birth_date,
            self.fmt.iso_date(measured),
            bmi,
            plausible=(getattr(rule, "plausible_min", None), getattr(rule, "plausible_max", None)),
        )
        words = self.words
        if growth.missing is not None or growth.z is None or growth.centile is None:
            reason = words.bmi_for_age_reasons.get(growth.missing or "reference-error", growth.missing or "")
            return words.bmi_for_age_missing.format(reason=reason)
        reference = words.growth_references.get(growth.reference or "", growth.reference or "")
        return words.bmi_for_age.format(
            reference=reference, z=self.fmt.signed(growth.z), centile=self.fmt.centile(growth.centile)
        )

    def _eligibility_basis(self) -> str:
        """What made the child eligible (or not yet): the anti-NXP2 result, the diagnosis, the age and how."""
        words = self.words
        rules = self.kb.eligibility
        parts: list[str] = []
        for pid in rules.requires_present:
            finding = self.findings.predictors.get(pid)
            if finding is None:
                continue
            date = escape_markdown(self.fmt.date(finding.effective) or words.undated)
            source = escape_markdown(", ".join(finding.references[:2])) or "?"
            if finding.state is not State.PRESENT:
                label = self.kb.predictors[pid].label
                if finding.basis in _EXAMINE:
                    parts.append(words.basis_missing.format(label=label))
                else:
                    parts.append(f"{label}: {self._basis_text(finding, pid)}")
            elif pid == rules.diagnosis:
                display = next((s.code_text for s in finding.sources if s.code_text), None)
                parts.append(
                    words.basis_diagnosis.format(
                        diagnosis=escape_markdown(display or self.kb.predictors[pid].label), date=date, source=source
                    )
                )
            else:
                recorded = next((s.value for s in finding.sources if s.value), None)
                parts.append(
                    words.basis_antibody.format(
                        value=escape_markdown(recorded or str(finding.value)), date=date, source=source
                    )
                )
        age, basis = self.assessment.age_years, self.assessment.age_basis
        if age is not None and basis in ("onset", "diagnosis", "now"):
            parts.append(words.basis_age[basis].format(age=age))  # type: ignore[index]
        if not parts:
            return ""
        return words.heading_line.format(heading=words.basis_heading, items=words.item_separator.join(parts))

    def _patient_cell(self, finding: PredictorFinding, predictor_id: str) -> str:
        words = self.words
        state = words.state_labels[finding.state.value]
        if finding.state is State.UNKNOWN:
            return self._basis_text(finding, predictor_id)
        shown = state if finding.state is not State.PRESENT else f"**{state}**"
        value = self._value_shown(finding)
        dated = False
        if finding.basis not in ("reported", "computed") and not value:
            value = self._basis_text(finding, predictor_id)
            dated = "{date}" in self.words.basis.get(finding.basis, "")
        date = None if dated else self.fmt.date(finding.effective)
        if value and date:
            value = words.value_date.format(value=value, date=escape_markdown(date))
        elif date:
            value = escape_markdown(date)
        return words.state_value.format(state=shown, value=value) if value else shown

    def _value_shown(self, finding: PredictorFinding) -> str:
        """The deciding value as the laboratory reported it, normalised beside (1100 pmol/L = 489.5 ng/mL)."""
        if len(finding.sources) == 1 and finding.sources[0].value and finding.basis == "reported":
            return escape_markdown(self._as_reported(finding.sources[0]))
        value = finding.value
        if value is None or isinstance(value, bool):
            return ""
        if isinstance(value, float):
            unit = f" {finding.unit}" if finding.unit and not finding.unit.startswith("{") else ""
            return escape_markdown(f"{self.fmt.number(value)}{unit}")
        return escape_markdown(str(value))

    def _as_reported(self, source: Source) -> str:
        recorded = source.value or ""
        normalised, unit = source.normalised_value, source.normalised_unit
        if normalised is None or not unit or not recorded or (source.unit or "") == unit:
            return recorded
        shown = self.fmt.number(normalised)
        return f"{recorded} = {shown} {unit}" if not unit.startswith("{") else f"{recorded} = {shown}"

    def _basis_text(self, finding: PredictorFinding, predictor_id: str) -> str:
        template = self.words.basis.get(finding.basis, finding.basis)
        label = self.kb.predictors[predictor_id].label
        sources = ", ".join(
            escape_markdown(f"{s.code_text or label} {self._as_reported(s)}".strip()) for s in finding.sources
        )
        predictor = self.kb.predictors[predictor_id]
        rule = predictor.rule
        detail = finding.basis_detail
        days = detail.get("lookback_days") or (str(rule.lookback_days) if rule.lookback_days else "")
        date = escape_markdown(self.fmt.date(finding.effective) or self.words.undated)
        minutes = int(detail.get("gap_minutes", "0"))
        gap = (
            self.words.gap_hours.format(n=max(1, round(minutes / 60)))
            if minutes < 48 * 60
            else self.words.gap_days.format(n=round(minutes / 1440))
        )
        return template.format(
            sources=sources,
            days=days,
            date=date,
            value=escape_markdown(detail.get("value", "")),
            pair=predictor.pair_label or predictor.label,
            gap=gap,
        )

    def _suggestions(self, card_uuid: str, predictor_ids: Iterable[str]) -> list[dict[str, Any]]:
        suggestions = []
        for predictor_id in predictor_ids:
            predictor = self.kb.predictors[predictor_id]
            if not self._orders(predictor_id) or predictor.order is None:
                continue
            suggestions.append(
                {
                    "label": self.words.suggestion_label.format(test=predictor.test),
                    "uuid": str(uuid.uuid5(uuid.UUID(card_uuid), predictor_id)),
                    "isRecommended": False,
                    "actions": [
                        {
                            "type": "create",
                            "description": predictor.order.text,
                            "resource": self._service_request(predictor_id),
                        }
                    ],
                }
            )
        return suggestions

    def _service_request(self, predictor_id: str) -> dict[str, Any]:
        predictor = self.kb.predictors[predictor_id]
        order = predictor.order
        assert order is not None
        code: dict[str, Any] = {"text": order.text}
        if order.system and order.code:
            coding: dict[str, str] = {"system": order.system, "code": order.code}
            if order.display:
                coding["display"] = order.display
            code["coding"] = [coding]
        words = self.words
        outcomes = [self.kb.outcomes[o].label.lower() for o in self.kb.outcome_ids_driven_by(predictor_id)]
        lookback = predictor.rule.lookback_days
        finding = self._finding(predictor_id)
        if finding.basis == "no-data":
            why = words.lookback_text.format(days=lookback) if lookback else words.lookback_unlimited_text
        else:
            why = html.unescape(self._basis_text(finding, predictor_id).replace("\\", ""))  # plain text
        reason = (
            words.suggestion_reason.format(outcomes=words.outcome_joiner.join(outcomes), why=why)
            if outcomes
            else words.suggestion_reason_eligibility.format(why=why)
        )
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "code": code,
            "subject": {"reference": f"Patient/{self.context.patient_id}"},
            "reasonCode": [{"text": reason}],
        }
        if self.context.user_id and self.context.user_id.split("/", 1)[0] in (
            "Practitioner",
            "PractitionerRole",
        ):
            resource["requester"] = {"reference": self.context.user_id}
        if order.note:
            resource["note"] = [{"text": order.note}]
        return resource

    def _extension(
        self, outcome_id: str | None, tier: Tier, drivers: Sequence[str], card_type: CardType = CardType.RISK
    ) -> AssessmentExtension:
        findings = self.findings
        assessment = self.assessment
        return {
            "version": EXTENSION_VERSION,
            "cardType": card_type,
            "outcome": outcome_id,
            "tier": tier,
            "knowledgeBase": {
                "id": self.kb.source.id,
                "version": self.kb.source.version,
                "language": self.language,
            },
            "evaluatedAt": findings.evaluated_at.isoformat().replace("+00:00", "Z"),
            "eligibility": {
                "eligible": assessment.eligible,
                "reason": assessment.eligibility,
                "ageYears": findings.age_years,
                "ageAtEligibility": assessment.age_years,
                "ageBasis": assessment.age_basis,
            },
            "drivers": list(drivers),
            "predictors": [_predictor_json(self._finding(p), p in drivers) for p in PREDICTOR_IDS],
            "counts": {
                "resourcesSeen": findings.resources_seen,
                "resourcesUsed": findings.resources_used,
                "skipped": {reason.value: count for reason, count in findings.skipped.items()},
            },
        }


def _p_with_relation(printed: str) -> str:
    """``"0.0082"`` → ``"= 0.0082"``; ``"<.0001"`` → ``"< .0001"``."""
    if printed[:1] in "<>":
        return f"{printed[0]} {printed[1:].strip()}"
    return f"= {printed}"


def _predictor_json(finding: PredictorFinding, drives: bool) -> PredictorJson:
    return {
        "id": finding.id,
        "state": finding.state,
        "value": finding.value,
        "unit": finding.unit,
        "effective": finding.effective,
        "sources": list(finding.references),
        "basis": finding.basis,
        "drivesTier": drives,
        "provenance": [
            {
                "reference": s.reference,
                "resourceType": s.resource_type,
                "valueSet": s.concept,
                "code": s.code_display,
                "effective": s.effective,
                "value": s.value,
                "unit": s.unit,
                "normalisedValue": s.normalised_value,
                "normalisedUnit": s.normalised_unit,
            }
            for s in finding.sources
        ],
    }
