"""Reading Observation values: qualitative verdicts, titers, muscle grades and threshold comparisons.

Pure functions over plain JSON (dicts, lists, strings, numbers). The codes and text patterns that decide what
"positive" means come from the answer and interpretation value sets through a :class:`AnswerSets`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .terminology import Terminology, codeable_texts


class Verdict(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True, slots=True)
class AnswerSets:
    """Which value sets mean positive / negative / indeterminate, for coded answers and interpretations."""

    positive: str = "answer-positive"
    negative: str = "answer-negative"
    indeterminate: str = "answer-indeterminate"
    interpretation_positive: str = "interpretation-positive"
    interpretation_negative: str = "interpretation-negative"
    interpretation_indeterminate: str = "interpretation-indeterminate"
    panel: str = "antibody-panel"
    """Names that mark a multi-antibody panel (its panel-level value never decides one antibody)."""


def verdict_of_text(terminology: Terminology, sets: AnswerSets, text: str) -> Verdict | None:
    """A result written as text: indeterminate is checked first, then negative ("not detected" contains
    "detected"), then positive."""
    if terminology.text_matches(sets.indeterminate, text):
        return Verdict.INDETERMINATE
    if terminology.text_matches(sets.negative, text):
        return Verdict.NEGATIVE
    if terminology.text_matches(sets.positive, text):
        return Verdict.POSITIVE
    return None


def verdict_of_codeable(terminology: Terminology, sets: AnswerSets, codeable: object) -> Verdict | None:
    """A coded answer (valueCodeableConcept): codes first, then its text and displays."""
    concepts = terminology.concepts_for_codeable(codeable)
    if sets.indeterminate in concepts:
        return Verdict.INDETERMINATE
    if sets.negative in concepts:
        return Verdict.NEGATIVE
    if sets.positive in concepts:
        return Verdict.POSITIVE
    for text in codeable_texts(codeable):
        verdict = verdict_of_text(terminology, sets, text)
        if verdict is not None:
            return verdict
    return None


def verdict_of_interpretation(terminology: Terminology, sets: AnswerSets, interpretations: object) -> Verdict | None:
    """Observation.interpretation (a list of CodeableConcepts) → the laboratory's verdict, if it gives one."""
    if not isinstance(interpretations, list):
        return None
    found: set[Verdict] = set()
    for item in interpretations:
        concepts = terminology.concepts_for_codeable(item)
        if sets.interpretation_indeterminate in concepts:
            found.add(Verdict.INDETERMINATE)
        elif sets.interpretation_positive in concepts:
            found.add(Verdict.POSITIVE)
        elif sets.interpretation_negative in concepts:
            found.add(Verdict.NEGATIVE)
    if len(found) == 1:
        return found.pop()
    if found:  # contradictory interpretations
        return Verdict.INDETERMINATE
    return None


# -- numbers -------------------------------------------------------------------------------------------


MAX_MAGNITUDE = 1e15
"""The largest magnitude read as a value, before and after unit conversion. No laboratory or body measurement comes
near it (a cell count per litre is ~1e12); far larger ones (1e308) are not results, would overflow in arithmetic
(a BMI from them) and cannot be written with the 28 significant digits the locale formatting works in."""


def bounded(number: float | None) -> float | None:
    """``number`` when finite and at most :data:`MAX_MAGNITUDE` in magnitude, else ``None``."""
    if number is None or not math.isfinite(number) or abs(number) > MAX_MAGNITUDE:
        return None
    return number


def as_number(value: object) -> float | None:
    """A JSON number as float (``bool`` is not a number; NaN, infinities, magnitudes beyond :data:`MAX_MAGNITUDE`
    and integers beyond a float's range are rejected: Python's JSON readers give such integers exactly, and
    ``float()`` of them raises)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return bounded(float(value))
    except OverflowError:
        return None


_TITER = re.compile(r"(?<![\d.])(<=|>=|<|>|≤|≥)?\s*1\s*[:/：]\s*(\d+(?:\.\d+)?)(?![\d.])")
_COMPARATORS = {"≤": "<=", "≥": ">=", "＜": "<", "＞": ">"}
_DIGIT = re.compile(r"\d")


def parse_titer(text: str) -> tuple[str | None, float] | None:
    """A titer, alone or with the pattern the laboratory writes beside it: ``"1:160"`` → ``(None, 160.0)``;
    ``"<1:40"`` → ``("<", 40.0)``; ``"1:100 speckled"``, ``"颗粒型 1：320"`` → the titer. Text holding any other
    number (two titers, a date) is not a titer: ``None``."""
    if len(text) > _MAX_VALUE_TEXT:
        return None
    m = _TITER.search(text)
    if m is None or _DIGIT.search(text[: m.start()] + text[m.end() :]):
        return None
    comparator = m.group(1)
    titer = bounded(float(m.group(2)))
    if titer is None:
        return None
    return (_COMPARATORS.get(comparator, comparator) if comparator else None), titer


_MAX_VALUE_TEXT = 200
"""Longer value strings are notes, not results: never parsed as numbers, titers or grades."""
_NUMBER_TEXT = re.compile(
    r"^\s*(<=|>=|<|>|≤|≥|＜|＞)?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s*([A-Za-zµμ%/\[\]{}0-9*^.]*)\s*$"
)


def parse_number_text(text: str) -> tuple[str | None, float, str | None] | None:
    """A number as laboratories write it in text: ``">1000"`` → ``(">", 1000.0, None)``;
    ``"1,100 pmol/L"`` → ``(None, 1100.0, "pmol/L")``; anything else → ``None``."""
    if len(text) > _MAX_VALUE_TEXT:
        return None
    m = _NUMBER_TEXT.match(text)
    if m is None:
        return None
    number = bounded(float(m.group(2).replace(",", "") + (m.group(3) or "")))
    if number is None:
        return None
    comparator = m.group(1)
    unit = m.group(4) or None
    return (_COMPARATORS.get(comparator, comparator) if comparator else None), number, unit


_GRADE = re.compile(
    r"^\s*(?:(?:MRC|MMT|grade|肌力)\s*[:：]?\s*)?"
    r"([0-5]|[IV]{1,3}|[ⅠⅡⅢⅣⅤ]|[零一二三四五])\s*([+-])?\s*(?:/\s*5)?\s*(?:级|度)?\s*([+-])?\s*$",
    re.IGNORECASE,
)
_ROMAN = {"0": 0, "I": 1, "II": 2, "III": 3, "IV": 4, "V": 5}
_ROMAN_GLYPHS = {"Ⅰ": 1, "Ⅱ": 2, "Ⅲ": 3, "Ⅳ": 4, "Ⅴ": 5}
_CHINESE_NUMERALS = {"零": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5}
GRADE_MODIFIER = 1.0 / 3.0


def parse_grade(value: object) -> float | None:
    """An MRC muscle grade (0-5) from a number or text: ``3`` → 3.0, ``"3/5"`` → 3.0, ``"3+"`` → 3.33,
    ``"4-"`` → 3.67; Roman numerals and Chinese grades as written on Chinese wards: ``"III级"``, ``"Ⅳ级"``,
    ``"3级"``, ``"肌力4-级"``, ``"三级"``. A ``+``/``-`` modifier moves the grade by a third towards the next one."""
    number = as_number(value)
    if number is not None:
        return number if 0.0 <= number <= 5.0 else None
    if not isinstance(value, str) or len(value) > _MAX_VALUE_TEXT:
        return None
    m = _GRADE.match(value)
    if m is None:
        return None
    token = m.group(1)
    upper = token.upper()
    if token.isdigit():
        grade = float(token)
    elif upper in _ROMAN:
        grade = float(_ROMAN[upper])
    elif token in _ROMAN_GLYPHS:
        grade = float(_ROMAN_GLYPHS[token])
    elif token in _CHINESE_NUMERALS:
        grade = float(_CHINESE_NUMERALS[token])
    else:
        return None  # e.g. "VV": letters that are no Roman numeral of 0-5
    modifier = m.group(2) or m.group(3)
    if modifier == "+":
        grade += GRADE_MODIFIER
    elif modifier == "-":
        grade -= GRADE_MODIFIER
    return min(max(grade, 0.0), 5.0)


# -- comparisons with comparators ----------------------------------------------------------------------

_Interval = tuple[float, bool, float, bool]  # low, low inclusive, high, high inclusive


def _possible(value: float, comparator: str | None) -> _Interval:
    if comparator == "<":
        return (-math.inf, False, value, False)
    if comparator == "<=":
        return (-math.inf, False, value, True)
    if comparator == ">":
        return (value, False, math.inf, False)
    if comparator == ">=":
        return (value, True, math.inf, False)
    return (value, True, value, True)


def _region(operator: str, threshold: float) -> _Interval:
    return _possible(threshold, operator)


def _contains(outer: _Interval, inner: _Interval) -> bool:
    olo, olo_in, ohi, ohi_in = outer
    ilo, ilo_in, ihi, ihi_in = inner
    low_ok = ilo > olo or (ilo == olo and (olo_in or not ilo_in))
    high_ok = ihi < ohi or (ihi == ohi and (ohi_in or not ihi_in))
    return low_ok and high_ok


def _disjoint(a: _Interval, b: _Interval) -> bool:
    alo, alo_in, ahi, ahi_in = a
    blo, blo_in, bhi, bhi_in = b
    if ahi < blo or (ahi == blo and not (ahi_in and blo_in)):
        return True
    return bhi < alo or (bhi == alo and not (bhi_in and alo_in))


def meets(value: float, comparator: str | None, operator: str, threshold: float) -> bool | None:
    """Does a value (possibly ``<5`` or ``>2000``) satisfy ``operator threshold``? ``None`` when the
    comparator leaves it open (``<500`` against ``> 200``)."""
    possible = _possible(value, None if comparator in (None, "=", "ad") else comparator)
    region = _region(operator, threshold)
    if _contains(region, possible):
        return True
    if _disjoint(region, possible):
        return False
    return None


def quantity_text(quantity: dict[str, Any]) -> str:
    """A Quantity as recorded, for display: ``"<5 ng/mL"``."""
    comparator = quantity.get("comparator") if isinstance(quantity.get("comparator"), str) else ""
    value = quantity.get("value")
    unit = quantity.get("unit") if isinstance(quantity.get("unit"), str) else quantity.get("code")
    number = as_number(value)
    shown = f"{number:g}" if number is not None else "?"
    return f"{comparator}{shown} {unit}".strip() if isinstance(unit, str) else f"{comparator}{shown}"
