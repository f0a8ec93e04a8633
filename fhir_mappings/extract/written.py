"""A value as the record writes it: shown as text, found as a quantity in text, or judged against the record's own
reference range or a titre cut-off. Plain functions of JSON; no state.
"""

from __future__ import annotations

import re
from typing import Any

from ..terminology import codeable_texts
from ..values import Verdict, as_number, bounded, meets, parse_number_text, quantity_text

Json = dict[str, Any]

_REF_RANGE_TEXT = re.compile(
    r"^\D{0,24}?(<=|<|≤|＜)\s*(\d+(?:\.\d+)?)"  # "<11", "≤20 U/mL", "阴性 <11", "Negative: <20"
    r"|^\s*0(?:\.0+)?\s*[-–~～]\s*(\d+(?:\.\d+)?)"  # "0-10", "0~10"
    r"|(?i:cut-?\s*off|临界值|界值)\D{0,6}?(\d+(?:\.\d+)?)"  # "cut-off 20", "临界值 20"
)
MAX_REFERENCE_TEXT = 200
"""Longer reference-range or ratio texts are notes: not searched for numbers (bounded regex work)."""
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


def has_value(part: Json) -> bool:
    """Whether the element holds any ``value[x]``."""
    return any(key.startswith("value") for key in part)


def value_text(part: Json) -> str | None:
    """The element's value rendered as text (``"250 ng/mL"``, ``"1:160"``, ``"Positive"``), or ``None``."""
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict):
        return quantity_text(quantity)
    if isinstance(part.get("valueString"), str):
        return str(part["valueString"])
    if isinstance(part.get("valueBoolean"), bool):
        return "true" if part["valueBoolean"] else "false"
    codeable = part.get("valueCodeableConcept")
    if codeable is not None:
        texts = codeable_texts(codeable)
        if texts:
            return texts[0]
        codings = codeable.get("coding") if isinstance(codeable, dict) else None
        if isinstance(codings, list) and codings and isinstance(codings[0], dict):
            return str(codings[0].get("code"))
    ratio = part.get("valueRatio")
    if isinstance(ratio, dict):
        numerator = as_number((ratio.get("numerator") or {}).get("value"))
        denominator = as_number((ratio.get("denominator") or {}).get("value"))
        if numerator is not None and denominator is not None:
            return f"{numerator:g}:{denominator:g}"
    if "valueInteger" in part:
        return str(part["valueInteger"])
    return None


def raw_value(part: Json) -> str | None:
    """Whatever value an element holds, as short text (for "could not be read: '…'")."""
    for key, value in part.items():
        if key.startswith("value") and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    return None


def quantity_of(part: Json) -> Json | None:
    """``valueQuantity``, or a quantity written as text (``">1000 ng/mL"``) as a Quantity-shaped dict."""
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict):
        return quantity
    text = part.get("valueString")
    if isinstance(text, str):
        written = parse_number_text(text)
        if written is not None and written[2] is not None:
            comparator, number, unit = written
            shaped: Json = {"value": number, "unit": unit}
            if comparator is not None:
                shaped["comparator"] = comparator
            return shaped
    return None


def number_in_text(text: str) -> float | None:
    """A bare number written as text (``"1.2"``); anything else is ``None``."""
    m = _NUMBER.match(text) if len(text) <= MAX_REFERENCE_TEXT else None
    return bounded(float(m.group(1))) if m else None


def titer_verdict(dilution: float, comparator: str | None, cutoff: float | None) -> Verdict | None:
    """A titre (the dilution's denominator) against the rule's cut-off; no cut-off, no verdict."""
    if cutoff is None:
        return None
    met = meets(dilution, comparator, ">=", cutoff)
    if met is None:
        return Verdict.INDETERMINATE
    return Verdict.POSITIVE if met else Verdict.NEGATIVE


def reference_range_verdict(number: float, comparator: str | None, ranges: object) -> Verdict | None:
    """Above the reference range's high limit is positive; at or below it negative. A text range such as
    ``"<11"`` means 11 and above is positive. No usable range: no verdict."""
    if not isinstance(ranges, list):
        return None
    for reference in ranges:
        if not isinstance(reference, dict):
            continue
        high = (
            as_number((reference.get("high") or {}).get("value")) if isinstance(reference.get("high"), dict) else None
        )
        if high is not None:
            met = meets(number, comparator, ">", high)
            return Verdict.INDETERMINATE if met is None else (Verdict.POSITIVE if met else Verdict.NEGATIVE)
        text = reference.get("text")
        if isinstance(text, str) and len(text) <= MAX_REFERENCE_TEXT:
            m = _REF_RANGE_TEXT.match(text) or _REF_RANGE_TEXT.search(text)
            limit = bounded(float(m.group(2) or m.group(3) or m.group(4))) if m is not None else None
            if m is not None and limit is not None:
                operator = ">=" if m.group(1) in ("<", "＜") else ">"
                met = meets(number, comparator, operator, limit)
                return Verdict.INDETERMINATE if met is None else (Verdict.POSITIVE if met else Verdict.NEGATIVE)
    return None
