"""Languages: the knowledge base's words through gettext message catalogs, and numbers and dates for the locale.

The knowledge base (``config/knowledge.toml``) is written in English, the source language. Every word a card, a
suggestion, an override reason, discovery or the evidence page says is a message of the catalog
``cds_service/locale/<language>/LC_MESSAGES/nxp2cds.po`` (GNU gettext, the format translators and their tools
work in): ``scripts/update-catalogs`` extracts them (``babel.cfg``: the knowledge base with
:func:`extract_knowledge`, the evidence page template with Jinja2's extractor) and updates every catalog.

At start-up :func:`translate_knowledge` makes one knowledge base per language by passing each translatable string
through that language's catalog; numbers, codes and the paper's printed estimates are never translated, so the
evidence is identical in every language. Nothing here does I/O after start-up, and nothing reads the clock.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from babel.support import NullTranslations, Translations

from cds_service.core.knowledge import KnowledgeBase

SOURCE_LANGUAGE = "en"
DOMAIN = "nxp2cds"

# Where the translatable strings of the knowledge base are: paths of keys, "*" for any key or list item.
# Everything else (ids, codes, systems, counts, the paper's printed estimates, DOIs, URLs) is never translated.
TRANSLATABLE: tuple[tuple[str, ...], ...] = (
    ("source", "label"),
    ("source", "cohort"),
    ("source", "method"),
    ("source", "caveat"),
    ("source", "caveat_short"),
    ("predictors", "*", "label"),
    ("predictors", "*", "short"),
    ("predictors", "*", "act"),
    ("predictors", "*", "test"),
    ("predictors", "*", "caveat"),
    ("predictors", "*", "pair_label"),
    ("predictors", "*", "order", "text"),
    ("predictors", "*", "order", "note"),
    ("outcomes", "*", "label"),
    ("outcomes", "*", "table"),
    ("outcomes", "*", "short"),
    ("outcomes", "*", "definition"),
    ("outcomes", "*", "tier_rationale"),
    ("outcomes", "*", "rows", "*", "label"),
    ("outcomes", "*", "rows", "*", "note"),
    ("outcomes", "*", "rows", "*", "top_tier_reason"),
    ("outcomes", "*", "rows", "*", "reference", "label"),
    ("outcomes", "*", "rows", "*", "exposed", "label"),
    ("defects", "*", "title"),
    ("defects", "*", "text"),
    ("wording", "**"),
)
_NOT_WORDS = frozenset({("wording", "override_reason_system"), ("wording", "override_reasons", "*", "code")})
_TAG = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")


class LanguageError(ValueError):
    """A configured language has no catalog, or a catalog cannot be read."""


def locale_dir() -> Path:
    return Path(str(resources.files("cds_service").joinpath("locale")))


def available_languages(directory: Path | None = None) -> tuple[str, ...]:
    """The source language and every language with a catalog, as BCP 47 tags (``zh-CN``)."""
    found = [SOURCE_LANGUAGE]
    base = directory or locale_dir()
    for po in sorted(base.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        found.append(po.parent.parent.name.replace("_", "-"))
    return tuple(found)


def _posix(tag: str) -> str:
    return tag.replace("-", "_")


@cache
def translations(language: str, directory: Path | None = None) -> NullTranslations:
    """The compiled catalog of ``language`` (read from its ``.po`` once; fuzzy entries are not used)."""
    if language == SOURCE_LANGUAGE:
        return NullTranslations()
    path = (directory or locale_dir()) / _posix(language) / "LC_MESSAGES" / f"{DOMAIN}.po"
    try:
        with path.open("rb") as handle:
            catalog = read_po(handle, locale=_posix(language), domain=DOMAIN)
    except (OSError, ValueError) as exc:
        raise LanguageError(f"{path}: cannot be read as a gettext catalog: {exc}") from exc
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def _walk(value: Any, path: tuple[str, ...], visit: Callable[[tuple[str, ...], str], str]) -> Any:
    if isinstance(value, str):
        return visit(path, value)
    if isinstance(value, dict):
        return {k: _walk(v, (*path, str(k)), visit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, (*path, "*"), visit) for v in value]
    return value


def _matches(path: tuple[str, ...]) -> bool:
    generic = tuple(
        "*" if i > 0 and path[i - 1] in ("predictors", "outcomes", "defects") else p for i, p in enumerate(path)
    )
    if any(_glob(generic, pattern) for pattern in _NOT_WORDS):
        return False
    return any(_glob(generic, pattern) for pattern in TRANSLATABLE)


def _glob(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if pattern and pattern[-1] == "**":
        head = pattern[:-1]
        return len(path) > len(head) and all(p == "*" or p == q for p, q in zip(head, path, strict=False))
    return len(path) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, path, strict=True))


def knowledge_messages(data: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every translatable string of a knowledge base document, with where it is."""
    found: list[tuple[tuple[str, ...], str]] = []

    def visit(path: tuple[str, ...], text: str) -> str:
        if text.strip() and _matches(path):
            found.append((path, text))
        return text

    _walk(dict(data), (), visit)
    yield from found


def translate_knowledge(knowledge: KnowledgeBase, language: str, directory: Path | None = None) -> KnowledgeBase:
    """The knowledge base with every translatable string in ``language`` (a string without a translation stays
    English). The result is validated like the original, so a translation cannot break a placeholder unnoticed:
    the caller's checks (:func:`missing_placeholders`) say which."""
    if language == SOURCE_LANGUAGE:
        return knowledge
    catalog = translations(language, directory)

    def visit(path: tuple[str, ...], text: str) -> str:
        return catalog.gettext(text) if _matches(path) else text

    document = _walk(knowledge.model_dump(mode="python"), (), visit)
    return KnowledgeBase.model_validate(document)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def missing_placeholders(knowledge: KnowledgeBase, language: str, directory: Path | None = None) -> list[str]:
    """Messages whose translation lacks (or adds) a ``{placeholder}`` of the English text."""
    catalog = translations(language, directory)
    problems = []
    for _path, text in knowledge_messages(knowledge.model_dump(mode="python")):
        translated = catalog.gettext(text)
        if set(_PLACEHOLDER.findall(text)) != set(_PLACEHOLDER.findall(translated)):
            problems.append(text)
    return problems


def negotiate(accept_language: Sequence[tuple[str, float]], supported: Sequence[str], default: str) -> str:
    """The best supported language for an ``Accept-Language`` header (already parsed into ``(tag, quality)``,
    best first), matching ``zh`` and ``zh-Hans`` to ``zh-CN``; else the site's default."""
    by_lower = {s.lower(): s for s in supported}
    for tag, quality in accept_language:
        if quality <= 0 or not _TAG.match(tag):
            continue
        lowered = tag.lower()
        if lowered in by_lower:
            return by_lower[lowered]
        primary = lowered.split("-", 1)[0]
        for candidate_lower, candidate in by_lower.items():
            if candidate_lower.split("-", 1)[0] == primary:
                return candidate
    return default


@dataclass(frozen=True, slots=True)
class Formatter:
    """Numbers, percentages and dates for one language (Babel's CLDR data)."""

    language: str

    @property
    def _locale(self) -> str:
        return _posix(self.language)

    def number(self, value: float) -> str:
        return _number(value, self._locale)

    def percent(self, rate: float) -> str:
        return _percent(rate, self._locale)

    def date(self, recorded: str | None) -> str | None:
        """A FHIR date or dateTime as the locale writes a date; partial dates (``2024``, ``2024-05``) as recorded."""
        if not recorded or len(recorded) < 10:
            return recorded
        return _date(recorded[:10], self._locale)

    def iso_date(self, recorded: str | None) -> dt.date | None:
        """The calendar date of a FHIR date or dateTime (``None`` when partial or unreadable)."""
        if not recorded or len(recorded) < 10:
            return None
        try:
            return dt.date.fromisoformat(recorded[:10])
        except ValueError:
            return None

    def signed(self, value: float) -> str:
        """A z-score with its sign (−1.9, +0.3; the minus sign as the locale writes it)."""
        text = str(format_decimal(abs(value), format="0.0", locale=self._locale))
        return f"−{text}" if value < 0 else f"+{text}"

    def centile(self, centile: float) -> str:
        """A centile as clinicians read it: whole numbers, and <1 / >99 at the ends."""
        if centile < 1:
            return "<1"
        if centile > 99:
            return ">99"
        return str(format_decimal(round(centile), format="0", locale=self._locale))

    def display_name(self) -> str:
        return str(Locale.parse(self._locale).get_display_name(self._locale) or self.language)


# Babel parses its patterns on every call; the same few values recur on every card (the cohort's rates, the
# dates of a chart), so the formatted strings are memoised, bounded.
@lru_cache(maxsize=4096)
def _number(value: float, locale: str) -> str:
    pattern = "#,##0.0" if abs(value) >= 10 else "#,##0.00"
    return str(format_decimal(value, format=pattern, locale=locale))


@lru_cache(maxsize=512)
def _percent(rate: float, locale: str) -> str:
    return str(format_percent(rate, locale=locale))


@lru_cache(maxsize=4096)
def _date(day: str, locale: str) -> str:
    try:
        parsed = dt.date.fromisoformat(day)
    except ValueError:
        return day
    return str(format_date(parsed, format="medium", locale=locale))


# -- extraction (Babel) --------------------------------------------------------------------------------


def extract_knowledge(
    fileobj: Any, keywords: Any, comment_tags: Any, options: Mapping[str, Any]
) -> Iterator[tuple[int, str, str, list[str]]]:
    """A Babel extraction method for the knowledge base TOML: every translatable string, with its key path as the
    translator's comment (``babel.cfg``: ``[cds_service.core.i18n.extract_knowledge: config/knowledge.toml]``)."""
    text = fileobj.read().decode("utf-8")
    data = tomllib.loads(text)
    lines = text.splitlines()
    for path, message in knowledge_messages(data):
        needle = '"' + message.splitlines()[0][:40]
        lineno = next((i + 1 for i, line in enumerate(lines) if needle in line), 0)
        yield lineno, "", message, [".".join(p for p in path if p != "*")]
