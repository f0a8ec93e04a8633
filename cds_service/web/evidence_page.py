"""The evidence page (``GET /evidence``): forest plots, 2x2 counts, method, caveats and the paper's defects.

No patient data and no authentication; no JavaScript either: the forest plots are SVG drawn here, on the server.
The page is rendered once per process (the knowledge base does not change while the service runs).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from html import escape
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request
from markupsafe import Markup

from cds_service.contracts import VERSION
from cds_service.core.i18n import negotiate
from cds_service.core.knowledge import KnowledgeBase, Outcome, Row
from cds_service.evidence.statistics import Verification, verify
from cds_service.web.runtime import runtime

bp = Blueprint("evidence", __name__, template_folder="templates")

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'"
_AXIS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
_LOW, _HIGH = 0.01, 1000.0
_LABEL_WIDTH, _PLOT_WIDTH, _ROW_HEIGHT, _TOP, _BOTTOM = 300, 420, 26, 16, 44


def _number(printed: str) -> float:
    """A printed estimate as a number for plotting (``>999.999`` → beyond the axis, ``<.0001`` → tiny)."""
    text = printed.strip()
    if text.startswith(">"):
        return math.inf
    if text.startswith("<"):
        return float(text[1:]) / 10
    return float(text)


def _x(value: float) -> float:
    clipped = min(max(value, _LOW), _HIGH)
    share = (math.log10(clipped) - math.log10(_LOW)) / (math.log10(_HIGH) - math.log10(_LOW))
    return _LABEL_WIDTH + share * _PLOT_WIDTH


def forest_plot(outcome_id: str, outcome: Outcome, knowledge: KnowledgeBase) -> Markup:
    """An SVG forest plot: one mark (``.or-mark``) per row at its odds ratio, its 95% CI as a line (an arrow where
    the interval goes beyond the axis), a reference line at OR = 1; tier-driving predictors filled."""
    rows = outcome.rows
    height = _TOP + len(rows) * _ROW_HEIGHT + _BOTTOM
    width = _LABEL_WIDTH + _PLOT_WIDTH + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="forest" data-outcome="{outcome_id}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{outcome_id}-plot-title">',
        f'<title id="{outcome_id}-plot-title">'
        f"{escape(knowledge.wording.evidence_page.plot_title.format(outcome=outcome.label))}</title>",
    ]
    one = _x(1.0)
    bottom = _TOP + len(rows) * _ROW_HEIGHT
    parts.append(f'<line class="reference" x1="{one:.1f}" y1="{_TOP - 6}" x2="{one:.1f}" y2="{bottom}" />')
    for tick in _AXIS:
        x = _x(tick)
        label = f"{tick:g}"
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" />')
        parts.append(f'<text class="tick-label" x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">{label}</text>')
    parts.append(
        f'<text class="axis-label" x="{_LABEL_WIDTH + _PLOT_WIDTH / 2:.1f}" y="{bottom + 36}" '
        f'text-anchor="middle">{escape(knowledge.wording.evidence_page.axis_label)}</text>'
    )
    for index, row in enumerate(rows):
        parts.append(_plot_row(index, row, row.predictor in outcome.drivers, knowledge))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def _plot_row(index: int, row: Row, driver: bool, knowledge: KnowledgeBase) -> str:
    y = _TOP + index * _ROW_HEIGHT + _ROW_HEIGHT / 2
    label = knowledge.predictors[row.predictor].label if row.predictor else row.label
    odds, low, high = (_number(v) for v in (row.published.odds_ratio, row.published.ci_low, row.published.ci_high))
    x_low, x_high, x_or = _x(low), _x(high), _x(odds)
    title = escape(
        knowledge.wording.evidence_page.mark_title.format(
            label=label,
            odds_ratio=row.published.odds_ratio,
            ci_low=row.published.ci_low,
            ci_high=row.published.ci_high,
            p=row.published.p,
        )
    )
    kind = "driver" if driver else "other"
    out = [
        f'<g class="row {kind}" data-row="{escape(row.row)}">',
        f'<text class="row-label" x="{_LABEL_WIDTH - 10}" y="{y + 4:.1f}" text-anchor="end">'
        f"{escape(_fit(label))}</text>",
        f'<line class="ci" x1="{x_low:.1f}" y1="{y:.1f}" x2="{x_high:.1f}" y2="{y:.1f}" />',
    ]
    if high > _HIGH:
        arrow = f"M{x_high - 7:.1f},{y - 5:.1f} L{x_high:.1f},{y:.1f} L{x_high - 7:.1f},{y + 5:.1f}"
        out.append(f'<path class="ci-open" d="{arrow}" />')
    out.append(f'<rect class="or-mark {kind}" x="{x_or - 5:.1f}" y="{y - 5:.1f}" width="10" height="10">')
    out.append(f"<title>{title}</title></rect></g>")
    return "".join(out)


def _fit(label: str, limit: int = 44) -> str:
    """A plot label short enough for the label column (the full label is in the mark's title); a Chinese character
    takes the width of two Latin ones."""
    width = 0
    for index, char in enumerate(label):
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
        if width > limit:
            return label[: max(index - 1, 1)].rstrip() + "…"
    return label


def _rate(events: int, n: int) -> str:
    return f"{events}/{n} ({events / n * 100:.0f}%)"


def render(
    knowledge: KnowledgeBase,
    verification: Verification,
    language: str = "en",
    languages: Sequence[tuple[str, str]] = (),
) -> str:
    checked = {(c.outcome_id, c.row.row): c for c in verification.rows}
    outcomes: list[dict[str, Any]] = []
    for outcome_id, outcome in knowledge.outcomes.items():
        rows = []
        for row in outcome.rows:
            check = checked[(outcome_id, row.row)]
            rows.append(
                {
                    "row": row,
                    "label": knowledge.predictors[row.predictor].label if row.predictor else row.label,
                    "driver": row.predictor in outcome.drivers,
                    "reference": f"{_rate(row.reference.events, row.reference.n)} {row.reference.label}",
                    "exposed": f"{_rate(row.exposed.events, row.exposed.n)} {row.exposed.label}",
                    "reproduced": check.reproduced == len(check.numbers),
                    "defects": [knowledge.defects[d].title for d in row.defects],
                }
            )
        outcomes.append(
            {
                "id": outcome_id,
                "outcome": outcome,
                "plot": forest_plot(outcome_id, outcome, knowledge),
                "rows": rows,
                "drivers": [knowledge.predictors[p].label for p in outcome.drivers],
                "tiers": tier_rules_text(outcome, knowledge),
            }
        )
    two_sided_ok, two_sided_total = verification.two_sided
    return render_template(
        "evidence.html",
        kb=knowledge,
        outcomes=outcomes,
        verification=verification,
        two_sided_ok=two_sided_ok,
        two_sided_total=two_sided_total,
        version=VERSION,
        wording=knowledge.wording,
        ep=knowledge.wording.evidence_page,
        language=language,
        languages=languages,
    )


@bp.get("/evidence")
def page() -> Response:
    """The evidence page in the language ``?lang=`` names, else the one ``Accept-Language`` asks for, else the
    site's; rendered once per language."""
    engine = runtime().engine
    asked = request.args.get("lang", "")
    language: str = (
        asked
        if asked in engine.languages
        else negotiate(list(request.accept_languages), engine.languages, engine.language)
    )
    cache: dict[str, bytes] = current_app.extensions.setdefault("nxp2_cds_evidence_html", {})
    html = cache.get(language)
    if html is None:
        knowledge: KnowledgeBase = engine.knowledge_for(language)
        names = [(lang, engine.knowledge_for(lang).wording.language_name) for lang in engine.languages]
        html = render(knowledge, verify(knowledge), language, names).encode()
        cache[language] = html
    response = Response(html, mimetype="text/html")
    response.vary.add("Accept-Language")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def tier_rules_text(outcome: Outcome, knowledge: KnowledgeBase) -> Sequence[str]:
    """The tier rules of an outcome, in words (the knowledge base's, in its language)."""
    words = knowledge.wording.evidence_page
    labels = knowledge.wording.indicator_labels
    lines = []
    for rule in outcome.tiers:
        conditions = []
        if rule.min_present:
            template = words.tier_rule_significant if rule.count == "significant" else words.tier_rule_present
            conditions.append(template.format(n=rule.min_present))
        if rule.min_unknown:
            conditions.append(words.tier_rule_unknown.format(n=rule.min_unknown))
        rules = words.tier_rule_and.join(conditions) or words.tier_rule_always
        lines.append(words.tier_line.format(tier=labels[rule.tier], rules=rules))
    lines.append(words.tier_no_card)
    return lines
