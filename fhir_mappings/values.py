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


def as_number(value: object) -> float | None:
    """A JSON number as float (``bool`` is not a number; NaN and infinities are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


_TITER = re.compile(r"^\s*(<=|>=|<|>|≤|≥)?\s*1\s*[:/]\s*(\d+(?:\.\d+)?)\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def parse_titer(text: str) -> tuple[str | None, float] | None:
    """``"1:160"`` → ``(None, 160.0)``; ``"<1:40"`` → ``("<", 40.0)``; anything else → ``None``."""
    m = _TITER.match(text)
    if m is None:
        return None
    comparator = m.group(1)
    return (_COMPARATORS.get(comparator, comparator) if comparator else None), float(m.group(2))


_GRADE = re.compile(r"^\s*(?:(?:MRC|grade)\s*)?([0-5])\s*([+-])?\s*(?:/\s*5)?\s*$", re.IGNORECASE)
GRADE_MODIFIER = 1.0 / 3.0


def parse_grade(value: object) -> float | None:
    """An MRC muscle grade (0-5) from a number or text: ``3`` → 3.0, ``"3/5"`` → 3.0, ``"3+"`` → 3.33,
    ``"4-"`` → 3.67. A ``+``/``-`` modifier moves the grade by a third towards the next one."""
    number = as_number(value)
    if number is not None:
        return number if 0.0 <= number <= 5.0 else None
    if not isinstance(value, str):
        return None
    m = _GRADE.match(value)
    if m is None:
        return None
    grade = float(m.group(1))
    if m.group(2) == "+":
        grade += GRADE_MODIFIER
    elif m.group(2) == "-":
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
