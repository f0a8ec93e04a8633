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

The modules: ``render`` (the cards assembled), ``facts`` (what a finding says, in words), ``tables`` (each outcome's
table compiled once per language), ``markdown`` (escaping, summaries under 140 characters), ``orders`` (the draft
ServiceRequests), ``extension`` (the assessment extension, to its typed model), ``context`` (what the request gives).
"""

from cds_service.core.cards.context import CardContext
from cds_service.core.cards.markdown import SUMMARY_MAX, escape_markdown, fit_summary
from cds_service.core.cards.render import render_cards
from cds_service.core.cards.tables import CardTemplates, compile_templates

__all__ = [
    "SUMMARY_MAX",
    "CardContext",
    "CardTemplates",
    "compile_templates",
    "escape_markdown",
    "fit_summary",
    "render_cards",
]
