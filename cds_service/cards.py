"""Assessment → CDS Hooks 2.0 cards (plain JSON-ready dicts). Pure: no I/O, no clock, no randomness.

Card and suggestion uuids are UUIDv5 of the hook instance, so the same request always yields the same cards and
feedback can be tied back to them. Every word comes from the knowledge base's ``[wording]``; this module only
arranges it. Values that come from the patient's record are escaped before they enter markdown.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mappings import PatientFindings, PredictorFinding, Source, State

from .knowledge import PREDICTOR_IDS, KnowledgeBase, Outcome, Predictor, Row
from .risk import Assessment, OutcomeAssessment

SUMMARY_MAX = 139
"""CDS Hooks: "one-sentence, <140-character summary"."""
EXTENSION_KEY = "nxp2-cds.assessment"
EXTENSION_VERSION = 1
_CARD_NAMESPACE = uuid.UUID("6f0c2d4e-5b1a-4c47-9a0e-2f7f4b1d9c33")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


@dataclass(frozen=True, slots=True)
class CardContext:
    """What the cards need from the request besides the assessment."""

    hook_instance: str
    patient_id: str
    user_id: str | None = None
    evidence_url: str | None = None
    """Absolute URL of the service's evidence page; when given, every card links to it."""


def render_cards(assessment: Assessment, knowledge: KnowledgeBase, context: CardContext) -> list[dict[str, Any]]:
    """The cards for one assessment: one per outcome with a tier, or the screening card, or none."""
    renderer = _Renderer(assessment, knowledge, context)
    if assessment.eligible:
        return [renderer.risk_card(o) for o in assessment.outcomes if o.tier is not None]
    if assessment.screening:
        return [renderer.screening_card()]
    if assessment.notice is not None:
        return [renderer.notice_card(assessment.notice)]
    return []


def escape_markdown(text: str) -> str:
    """Make untrusted text inert inside GitHub-flavoured markdown (and a table cell)."""
    flat = "".join(_HTML_SPECIAL.get(ch, ch) for ch in " ".join(text.split()))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", flat)


def fit_summary(template: str, lists: Mapping[str, Sequence[str]], values: Mapping[str, object]) -> str:
    """Fill ``template``; while the result is 140 characters or more, show fewer list items (``a, b +2 more``),
    and as a last resort cut the text with an ellipsis."""
    longest = max((len(v) for v in lists.values()), default=0)
    for shown in range(longest, -1, -1):
        rendered = {name: _short_list(items, shown) for name, items in lists.items()}
        text = template.format(**rendered, **values)
        if len(text) <= SUMMARY_MAX:
            return text
    return text[: SUMMARY_MAX - 1].rstrip() + "…"


def _short_list(items: Sequence[str], shown: int) -> str:
    if len(items) <= shown:
        return ", ".join(items)
    if shown == 0:
        return f"{len(items)}"
    return ", ".join(items[:shown]) + f" +{len(items) - shown} more"


class _Renderer:
    def __init__(self, assessment: Assessment, knowledge: KnowledgeBase, context: CardContext) -> None:
        self.assessment = assessment
        self.findings: PatientFindings = assessment.findings
        self.kb = knowledge
        self.words = knowledge.wording
        self.context = context

    # -- cards ---------------------------------------------------------------------------------------
    def risk_card(self, result: OutcomeAssessment) -> dict[str, Any]:
        assert result.tier is not None
        outcome = self.kb.outcomes[result.outcome_id]
        template = self.words.outcomes[result.outcome_id].summary(result.tier)
        assert template is not None  # the knowledge base validator guarantees it
        short = self.kb.predictors
        summary = fit_summary(
            template,
            {
                "present": [short[p].short for p in result.present],
                "unknown": [short[p].short for p in result.unknown],
            },
            {
                "outcome": outcome.label,
                "outcome_short": outcome.short,
                "tier": self.words.indicator_labels[result.tier],
                "present_count": len(result.present),
                "unknown_count": len(result.unknown),
                "driver_count": len(outcome.drivers),
            },
        )
        return self._card(
            result.outcome_id,
            summary,
            self._risk_detail(result, outcome),
            result.tier,
            result.unknown,
            self._extension(result.outcome_id, result.tier, outcome.drivers),
        )

    def screening_card(self) -> dict[str, Any]:
        wording = self.words.screening
        missing = self.kb.eligibility.screening_requires_unknown
        pending = any(self.findings.predictors[p].basis == "pending" for p in missing if p in self.findings.predictors)
        status = [
            f"**{self.kb.predictors[p].label}:** {self._basis_text(self.findings.predictors[p], p)}"
            for p in missing
            if p in self.findings.predictors
        ]
        return self._card(
            "screening",
            fit_summary(wording.summary_pending if pending else wording.summary, {}, {}),
            "\n\n".join([wording.detail, *status, self._evidence_block()]),
            "info",
            missing,
            self._extension(None, "info", (), card_type="screening"),
        )

    def notice_card(self, notice: str) -> dict[str, Any]:
        wording = self.words.notices[notice]
        blocks = [wording.detail]
        basis = self._eligibility_basis()
        if basis:
            blocks.append(basis)
        blocks.append(self._evidence_block())
        return self._card(
            notice,
            fit_summary(wording.summary, {}, {}),
            "\n\n".join(blocks),
            "info",
            (),
            self._extension(None, "info", (), card_type="notice"),
        )

    def _card(
        self,
        name: str,
        summary: str,
        detail: str,
        indicator: str,
        missing: Iterable[str],
        extension: dict[str, Any],
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
    def _uuid(self, name: str) -> str:
        return str(uuid.uuid5(_CARD_NAMESPACE, f"{self.context.hook_instance}/{name}"))

    def _source(self) -> dict[str, Any]:
        return {"label": self.kb.source.label, "url": self.kb.source.url}

    def _links(self, anchor: str | None) -> list[dict[str, Any]]:
        if not self.context.evidence_url:
            return []
        url = f"{self.context.evidence_url}#{anchor}" if anchor else self.context.evidence_url
        return [{"label": f"{self.words.evidence_heading}: {self.kb.source.label}", "url": url, "type": "absolute"}]

    def _override_reasons(self) -> list[dict[str, str]]:
        system = self.words.override_reason_system
        return [{"system": system, "code": r.code, "display": r.display} for r in self.words.override_reasons]

    def _risk_detail(self, result: OutcomeAssessment, outcome: Outcome) -> str:
        words = self.words
        headers = [h.format(outcome_short=outcome.short) for h in words.table_headers]
        lines = [words.outcomes[result.outcome_id].intro, "", self._eligibility_basis(), ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        footnotes: list[str] = []
        for predictor_id in outcome.drivers:
            row = outcome.row_for(predictor_id)
            assert row is not None  # validated: every driver has a row
            lines.append(self._table_row(predictor_id, row, footnotes))
        blocks = ["\n".join(lines)]
        if footnotes:
            blocks.append("\n".join(footnotes))
        row_predictors = [r.predictor for r in outcome.rows if r.predictor and r.predictor not in outcome.drivers]
        examine = [p for p in (*result.unknown, *row_predictors) if self.findings.predictors[p].basis in _EXAMINE]
        if examine:
            blocks.append(
                f"**{words.examine_heading}:** " + ", ".join(self.kb.predictors[p].label for p in examine) + "."
            )
        others_unknown = [p for p in result.unknown if p not in examine]
        if others_unknown:
            items = [
                f"{self.kb.predictors[p].label} — {self._basis_text(self.findings.predictors[p], p)}"
                for p in others_unknown
            ]
            blocks.append(f"**{words.not_assessed_heading}:** " + "; ".join(items) + ".")
        others = [r for r in outcome.rows if r.predictor and r.predictor not in outcome.drivers]
        if others:
            parts = []
            for row in others:
                assert row.predictor is not None
                state = words.state_labels[self.findings.state(row.predictor).value]
                note = f" — {row.note}" if row.note else ""
                parts.append(
                    f"{self.kb.predictors[row.predictor].label}: {state} "
                    f"(OR {row.published.odds_ratio}, P {row.published.p}){note}"
                )
            blocks.append(f"**{words.other_factors_heading}:** " + " · ".join(parts))
        caveats = [
            f"{self.kb.predictors[p].label}: {self.kb.predictors[p].caveat}"
            for p in outcome.drivers
            if self.kb.predictors[p].caveat
        ]
        if caveats:
            blocks.append("\n".join(f"- {c}" for c in caveats))
        defects = self._defects_for(outcome.row_for(p) for p in outcome.drivers)
        if defects:
            blocks.append(f"**{words.defects_heading}:**\n" + "\n".join(f"- {d}" for d in defects))
        blocks.append(self._evidence_block(outcome))
        return "\n\n".join(blocks)

    def _table_row(self, predictor_id: str, row: Row, footnotes: list[str]) -> str:
        predictor = self.kb.predictors[predictor_id]
        finding = self.findings.predictors[predictor_id]
        state = self.words.state_labels[finding.state.value]
        state_cell = f"**{state}**" if finding.state is State.PRESENT else state
        rates = (
            f"{row.exposed.events}/{row.exposed.n} ({_percent(row.exposed.rate)}) vs "
            f"{row.reference.events}/{row.reference.n} ({_percent(row.reference.rate)})"
        )
        published = row.published
        marker = ""
        if row.zero_cell and row.p_two_sided:
            marker = _SUPERSCRIPTS[len(footnotes) % len(_SUPERSCRIPTS)]
            footnotes.append(
                f"{marker} {predictor.label}: "
                + self.words.one_sided_footnote.format(p_two_sided=_p_with_relation(row.p_two_sided))
                + (f" {row.note}" if row.note else "")
            )
        odds = f"{published.odds_ratio} ({published.ci_low} to {published.ci_high}){marker}"
        cells = [
            predictor.label,
            state_cell,
            self._value_cell(finding, predictor_id),
            rates,
            odds,
            f"{published.p}{marker}",
        ]
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    def _eligibility_basis(self) -> str:
        """What made the child eligible (or not yet): the anti-NXP2 result, the diagnosis, the age and how."""
        words = self.words
        rules = self.kb.eligibility
        parts: list[str] = []
        for pid in rules.requires_present:
            finding = self.findings.predictors.get(pid)
            if finding is None:
                continue
            date = escape_markdown(finding.effective[:10]) if finding.effective else words.undated
            source = escape_markdown(", ".join(finding.references[:2])) or "?"
            if finding.state is not State.PRESENT:
                label = self.kb.predictors[pid].label
                if finding.basis in _EXAMINE:
                    parts.append(words.basis_missing.format(label=label))
                else:
                    parts.append(f"{label}: {self._basis_text(finding, pid)}")
            elif pid == rules.diagnosis:
                display = next((s.code_display for s in finding.sources if s.code_display), None)
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
        if age is not None and basis in words.basis_age:
            parts.append(words.basis_age[basis].format(age=age))
        return f"**{words.basis_heading}:** " + "; ".join(parts) + "." if parts else ""

    def _value_cell(self, finding: PredictorFinding, predictor_id: str) -> str:
        if finding.state is State.UNKNOWN:
            return self._basis_text(finding, predictor_id)
        shown = _value_display(finding)
        date = f" ({escape_markdown(finding.effective[:10])})" if finding.effective else ""
        basis = self._basis_text(finding, predictor_id)
        if finding.basis == "reported" and shown:
            if len(finding.sources) == 1 and finding.sources[0].value:
                shown = escape_markdown(_as_reported(finding.sources[0]))
            return f"{shown}{date}"
        return f"{shown}{date}, {basis}" if shown else f"{basis}{date}"

    def _basis_text(self, finding: PredictorFinding, predictor_id: str) -> str:
        template = self.words.basis.get(finding.basis, finding.basis)
        sources = ", ".join(
            escape_markdown(f"{s.code_display or s.concept} {_as_reported(s)}".strip()) for s in finding.sources
        )
        predictor = self.kb.predictors[predictor_id]
        rule = predictor.rule
        detail = finding.basis_detail
        days = detail.get("lookback_days") or (str(rule.lookback_days) if rule.lookback_days else "")
        date = escape_markdown(finding.effective[:10]) if finding.effective else "?"
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

    def _defects_for(self, rows: Iterable[Row | None]) -> list[str]:
        seen: list[str] = []
        for row in rows:
            if row is None:
                continue
            for defect in row.defects:
                if defect not in seen:
                    seen.append(defect)
        return [f"{self.kb.defects[d].title}: {self.kb.defects[d].text}" for d in seen]

    def _evidence_block(self, outcome: Outcome | None = None) -> str:
        source = self.kb.source
        table = f" ({outcome.table})" if outcome else ""
        return (
            f"**{self.words.evidence_heading}:** {source.caveat} {source.cohort} "
            f"Source{table}: {source.citation} https://doi.org/{source.doi}"
        )

    def _suggestions(self, card_uuid: str, predictor_ids: Iterable[str]) -> list[dict[str, Any]]:
        suggestions = []
        for predictor_id in predictor_ids:
            predictor = self.kb.predictors[predictor_id]
            finding = self.findings.predictors.get(predictor_id)
            if predictor.order is None or (finding is not None and finding.basis in _NO_REORDER):
                continue
            suggestions.append(
                {
                    "label": self.words.suggestion_label.format(test=predictor.test),
                    "uuid": str(uuid.uuid5(uuid.UUID(card_uuid), predictor_id)),
                    "actions": [
                        {
                            "type": "create",
                            "description": predictor.order.text,
                            "resource": self._service_request(predictor_id, predictor),
                        }
                    ],
                }
            )
        return suggestions

    def _service_request(self, predictor_id: str, predictor: Predictor) -> dict[str, Any]:
        order = predictor.order
        assert order is not None
        code: dict[str, Any] = {"text": order.text}
        if order.system and order.code:
            coding: dict[str, str] = {"system": order.system, "code": order.code}
            if order.display:
                coding["display"] = order.display
            code["coding"] = [coding]
        outcomes = [self.kb.outcomes[o].label.lower() for o in self.kb.outcome_ids_driven_by(predictor_id)]
        lookback = predictor.rule.lookback_days
        finding = self.findings.predictors.get(predictor_id)
        if finding is None or finding.basis == "no-data":
            why = self.words.lookback_text.format(days=lookback) if lookback else self.words.lookback_unlimited_text
        else:
            why = html.unescape(self._basis_text(finding, predictor_id).replace("\\", ""))  # plain text, not markdown
        reason = self.words.suggestion_reason.format(
            outcomes=" and ".join(outcomes) if outcomes else "eligibility", why=why
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
        self, outcome_id: str | None, tier: str, drivers: Sequence[str], card_type: str = "risk"
    ) -> dict[str, Any]:
        findings = self.findings
        assessment = self.assessment
        return {
            "version": EXTENSION_VERSION,
            "cardType": card_type,
            "outcome": outcome_id,
            "tier": tier,
            "knowledgeBase": {"id": self.kb.source.id, "version": self.kb.source.version},
            "evaluatedAt": findings.evaluated_at.isoformat().replace("+00:00", "Z"),
            "eligibility": {
                "eligible": assessment.eligible,
                "reason": assessment.eligibility,
                "ageYears": findings.age_years,
                "ageAtEligibility": assessment.age_years,
                "ageBasis": assessment.age_basis,
            },
            "drivers": list(drivers),
            "predictors": [_predictor_json(findings.predictors[p], p in drivers) for p in PREDICTOR_IDS],
            "counts": {
                "resourcesSeen": findings.resources_seen,
                "resourcesUsed": findings.resources_used,
                "skipped": dict(findings.skipped),
            },
        }


_SUPERSCRIPTS = ("¹", "²", "³", "⁴", "⁵", "⁶", "⁷", "⁸", "⁹")
_EXAMINE = frozenset({"not-recorded", "suspected"})
"""Clinical findings nobody recorded either way: the card asks the clinician to examine for them now."""
_NO_REORDER = frozenset({"pending"})
"""A result on its way: no repeat order is suggested."""


def _as_reported(source: Source) -> str:
    """The value as the laboratory reported it, with the normalised value beside it when the unit differs:
    ``"1100 pmol/L = 489.5 ng/mL"``."""
    recorded = source.value or ""
    normalised, unit = source.normalised_value, source.normalised_unit
    if normalised is None or not unit or not recorded or (source.unit or "") == unit:
        return recorded
    shown = f"{normalised:.1f}" if abs(normalised) >= 10 else f"{normalised:.2f}"
    return f"{recorded} = {shown} {unit}" if not unit.startswith("{") else f"{recorded} = {shown}"


def _p_with_relation(printed: str) -> str:
    """``"0.0082"`` → ``"= 0.0082"``; ``"<.0001"`` → ``"< .0001"``."""
    if printed[:1] in "<>":
        return f"{printed[0]} {printed[1:].strip()}"
    return f"= {printed}"


def _percent(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def _value_display(finding: PredictorFinding) -> str:
    value = finding.value
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float):
        shown = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return escape_markdown(
            f"{shown} {finding.unit}" if finding.unit and not finding.unit.startswith("{") else shown
        )
    return escape_markdown(str(value))


def _predictor_json(finding: PredictorFinding, drives: bool) -> dict[str, Any]:
    return {
        "id": finding.id,
        "state": finding.state.value,
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
