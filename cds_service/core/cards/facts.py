"""What a finding says, in the card's words: the patient's cell of a table, a value as the laboratory reported it, why a
predictor is unknown, what made the child eligible, BMI for age. Shared by the detail, the summary and the orders.
Values from the record are escaped before they enter markdown."""

from __future__ import annotations

from cds_service.core.cards.markdown import escape_markdown
from cds_service.core.growth import bmi_for_age
from cds_service.core.i18n import Formatter
from cds_service.core.knowledge import KnowledgeBase
from cds_service.core.risk import Assessment
from fhir_mappings import Basis, PatientFindings, PredictorFinding, Source, State

EXAMINE = frozenset({Basis.NOT_RECORDED, Basis.SUSPECTED})
"""Clinical findings nobody recorded either way: the card asks the clinician to examine for them now."""
NO_REORDER = frozenset({Basis.PENDING})
"""A result on its way: no repeat order is suggested."""
BMI = "bmi_lt_15"


class Facts:
    """One assessment's findings, worded in one language."""

    def __init__(self, assessment: Assessment, knowledge: KnowledgeBase, language: str) -> None:
        self.assessment = assessment
        self.findings: PatientFindings = assessment.findings
        self.kb = knowledge
        self.words = knowledge.wording
        self.language = language
        self.fmt = Formatter(language)

    def finding(self, predictor_id: str) -> PredictorFinding:
        found = self.findings.predictors.get(predictor_id)
        return found if found is not None else PredictorFinding(id=predictor_id, state=State.UNKNOWN)

    def orders(self, predictor_id: str) -> bool:
        return self.kb.predictors[predictor_id].order is not None and self.finding(predictor_id).basis not in (
            NO_REORDER
        )

    def bmi_context(self) -> str:
        """BMI for age (WHO) beside the paper's absolute cut-off: context, never the rule."""
        finding = self.finding(BMI)
        measured = finding.effective
        bmi = finding.value if isinstance(finding.value, float) else None
        rule = self.kb.predictors[BMI].rule
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

    def eligibility_basis(self) -> str:
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
                if finding.basis in EXAMINE:
                    parts.append(words.basis_missing.format(label=label))
                else:
                    parts.append(f"{label}: {self.basis_text(finding, pid)}")
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
        if age is not None and basis is not None:
            parts.append(words.basis_age[basis].format(age=age))
        if not parts:
            return ""
        return words.heading_line.format(heading=words.basis_heading, items=words.item_separator.join(parts))

    def patient_cell(self, finding: PredictorFinding, predictor_id: str) -> str:
        words = self.words
        state = words.state_labels[finding.state.value]
        if finding.state is State.UNKNOWN:
            return self.basis_text(finding, predictor_id)
        shown = state if finding.state is not State.PRESENT else f"**{state}**"
        value = self.value_shown(finding)
        dated = False
        if finding.basis not in (Basis.REPORTED, Basis.COMPUTED) and not value:
            value = self.basis_text(finding, predictor_id)
            dated = "{date}" in self.words.basis.get(finding.basis, "")
        date = None if dated else self.fmt.date(finding.effective)
        if value and date:
            value = words.value_date.format(value=value, date=escape_markdown(date))
        elif date:
            value = escape_markdown(date)
        return words.state_value.format(state=shown, value=value) if value else shown

    def value_shown(self, finding: PredictorFinding) -> str:
        """The deciding value as the laboratory reported it, normalised beside (1100 pmol/L = 489.5 ng/mL)."""
        if len(finding.sources) == 1 and finding.sources[0].value and finding.basis is Basis.REPORTED:
            return escape_markdown(self.as_reported(finding.sources[0]))
        value = finding.value
        if value is None or isinstance(value, bool):
            return ""
        if isinstance(value, float):
            unit = f" {finding.unit}" if finding.unit and not finding.unit.startswith("{") else ""
            return escape_markdown(f"{self.fmt.number(value)}{unit}")
        return escape_markdown(str(value))

    def as_reported(self, source: Source) -> str:
        recorded = source.value or ""
        normalised, unit = source.normalised_value, source.normalised_unit
        if normalised is None or not unit or not recorded or (source.unit or "") == unit:
            return recorded
        shown = self.fmt.number(normalised)
        return f"{recorded} = {shown} {unit}" if not unit.startswith("{") else f"{recorded} = {shown}"

    def basis_text(self, finding: PredictorFinding, predictor_id: str) -> str:
        template = self.words.basis.get(finding.basis, finding.basis)
        label = self.kb.predictors[predictor_id].label
        sources = ", ".join(
            escape_markdown(f"{s.code_text or label} {self.as_reported(s)}".strip()) for s in finding.sources
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
