"""Text for cards: untrusted values made inert in markdown, summaries fitted under 140 characters, table cells."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SUMMARY_MAX = 139
"""CDS Hooks: a card's summary is under 140 characters."""
_MARKDOWN_SPECIAL = "\\`*_{}[]()#+!|~"
_HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPES = str.maketrans({**{ch: "\\" + ch for ch in _MARKDOWN_SPECIAL}, **_HTML_SPECIAL})
"""One pass (``str.translate``): the HTML specials as entities (which hold no markdown special), each markdown special
behind a backslash."""
SUPERSCRIPTS = ("¹", "²", "³", "⁴", "⁵", "⁶", "⁷", "⁸", "⁹")
"""Footnote markers."""


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


def cell(text: str) -> str:
    """``text`` safe inside a table cell (its pipes escaped)."""
    return text.replace("|", "\\|")
