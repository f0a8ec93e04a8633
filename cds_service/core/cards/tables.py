"""Each outcome's predictor table without the patient — header, the cohort's rates and OR/P per row, the footnotes —
compiled once per language at start-up (:func:`compile_templates`); a card adds only the patient's column."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cds_service.core.cards.markdown import SUPERSCRIPTS, cell
from cds_service.core.i18n import SOURCE_LANGUAGE, Formatter
from cds_service.core.knowledge import KnowledgeBase


@dataclass(frozen=True, slots=True)
class Table:
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

    tables: Mapping[str, Table]


def compile_templates(knowledge: KnowledgeBase, language: str | None = None) -> CardTemplates:
    """The card templates of ``knowledge`` (already in ``language``)."""
    words = knowledge.wording
    fmt = Formatter(language or SOURCE_LANGUAGE)
    tables: dict[str, Table] = {}
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
                marker = SUPERSCRIPTS[len(footnotes) % len(SUPERSCRIPTS)]
                footnotes.append(
                    words.one_sided_footnote.format(
                        marker=marker, predictor=predictor.short, p_two_sided=p_with_relation(row.p_two_sided)
                    )
                )
            odds = words.odds.format(odds_ratio=row.published.odds_ratio, p=f"{row.published.p}{marker}")
            rows.append((predictor_id, cell(predictor.short), cell(rates), cell(odds)))
        tables[outcome_id] = Table(head, tuple(rows), tuple(footnotes))
    return CardTemplates(tables)


def p_with_relation(printed: str) -> str:
    """``"0.0082"`` → ``"= 0.0082"``; ``"<.0001"`` → ``"< .0001"``."""
    if printed[:1] in "<>":
        return f"{printed[0]} {printed[1:].strip()}"
    return f"= {printed}"
