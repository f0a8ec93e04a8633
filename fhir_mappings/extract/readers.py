"""The value readers: one candidate result → a :class:`~.run.Reading` (met, not met, or open), validated with
fhir.resources first and only when read, so validation costs grow with the predictors, not the chart. A result that
cannot be read returns ``None`` and is skipped with its reason (``unrecognised-value``, ``no-value``,
``unit-not-convertible``, or the R4 validation failure).
"""

from __future__ import annotations

from ..model import Basis, SkipReason, Source
from ..rules import AntibodyRule, BmiRule, GradeRule, QuantityRule, RatioRule
from ..terminology import codeable_texts
from ..values import (
    Verdict,
    as_number,
    bounded,
    meets,
    parse_grade,
    parse_number_text,
    parse_titer,
    verdict_of_codeable,
    verdict_of_interpretation,
    verdict_of_text,
)
from .run import Item, Json, Reading, Run
from .written import (
    has_value,
    number_in_text,
    quantity_of,
    reference_range_verdict,
    titer_verdict,
    value_text,
)


def _unread(part: Json) -> SkipReason:
    return SkipReason.UNRECOGNISED_VALUE if has_value(part) else SkipReason.NO_VALUE


def read_antibody(run: Run, item: Item, rule: AntibodyRule) -> Reading | None:
    """An antibody result: its interpretation, else its value (coded, boolean, text, titre, or a number against
    the reported range)."""
    if not run.valid(item.resource):
        return None
    setup = run.setup
    part = item.part
    shown = value_text(part)
    verdict = verdict_of_interpretation(setup.terminology, setup.answers, part.get("interpretation"))
    if verdict is None:
        verdict = _antibody_value(run, part, rule, item.concept in rule.titer_valuesets)
    if verdict is None:
        run.skip(item.resource, _unread(part))
        return None
    decisive = None if verdict is Verdict.INDETERMINATE else verdict is Verdict.POSITIVE
    return Reading(decisive, shown or verdict.value, None, (item,), (run.source(item, None, None, shown),))


def _antibody_value(run: Run, part: Json, rule: AntibodyRule, titer_code: bool) -> Verdict | None:
    answers, terminology = run.setup.answers, run.setup.terminology
    if "valueCodeableConcept" in part:
        return verdict_of_codeable(terminology, answers, part["valueCodeableConcept"])
    if "valueBoolean" in part:
        flag = part["valueBoolean"]
        return None if not isinstance(flag, bool) else (Verdict.POSITIVE if flag else Verdict.NEGATIVE)
    text = part.get("valueString")
    if isinstance(text, str):
        titer = parse_titer(text)
        if titer is not None:
            return titer_verdict(titer[1], titer[0], rule.titer_cutoff)
        verdict = verdict_of_text(terminology, answers, text)
        if verdict is not None:
            return verdict
        written = parse_number_text(text)  # ">1000", "35 U/mL": against the reported range or cut-off
        if written is None:
            return None
        return reference_range_verdict(written[1], written[0], part.get("referenceRange"))
    ratio = part.get("valueRatio")
    if isinstance(ratio, dict):
        numerator = as_number((ratio.get("numerator") or {}).get("value"))
        denominator = as_number((ratio.get("denominator") or {}).get("value"))
        if numerator and denominator:
            return titer_verdict(denominator / numerator, None, rule.titer_cutoff)
        return None
    quantity = part.get("valueQuantity")
    number: float | None = None
    comparator: str | None = None
    unit: str | None = None
    if isinstance(quantity, dict):
        number = as_number(quantity.get("value"))
        comparator = quantity.get("comparator") if isinstance(quantity.get("comparator"), str) else None
        unit = run.setup.units.ucum_of(quantity)
    elif "valueInteger" in part:
        number = as_number(part["valueInteger"])
    if number is None:
        return None
    if titer_code or (unit is not None and unit.lower() in ("{titer}", "{dilution}")):
        return titer_verdict(number, comparator, rule.titer_cutoff)
    return reference_range_verdict(number, comparator, part.get("referenceRange"))


def read_quantity(run: Run, item: Item, rule: QuantityRule) -> Reading | None:
    """A measurement (or a quantity written as text) converted to the rule's unit, against its threshold."""
    if not run.valid(item.resource):
        return None
    quantity = quantity_of(item.part)
    if quantity is None:
        run.skip(item.resource, _unread(item.part))
        return None
    normalised = normalise(
        run,
        quantity,
        rule.unit,
        rule.molar.unit if rule.molar else None,
        rule.molar.per_unit if rule.molar else None,
    )
    if normalised is None:
        run.skip(item.resource, SkipReason.UNIT_NOT_CONVERTIBLE)
        return None
    comparator = quantity.get("comparator") if isinstance(quantity.get("comparator"), str) else None
    sources = (run.source(item, rounded(normalised), rule.unit),)
    if not plausible(rule, normalised):
        return Reading(None, rounded(normalised), rule.unit, (item,), sources, basis=Basis.IMPLAUSIBLE)
    decisive = meets(normalised, comparator, rule.operator, rule.threshold)
    return Reading(
        decisive,
        rounded(normalised),
        rule.unit,
        (item,),
        sources,
        severity=normalised if rule.operator in (">", ">=") else -normalised,
    )


def normalise(
    run: Run, quantity: Json, target: str, molar_unit: str | None = None, per_unit: float | None = None
) -> float | None:
    """``quantity`` in ``target`` (UCUM), or through a molar unit and the substance's mass per unit."""
    units = run.setup.units
    number = as_number(quantity.get("value"))
    unit = units.ucum_of(quantity)
    if number is None or unit is None:
        return None
    converted = units.convert(number, unit, target)
    if converted is None and molar_unit is not None and per_unit is not None:
        molar = units.convert(number, unit, molar_unit)
        converted = None if molar is None else molar / per_unit
    return bounded(converted)


def read_grade(run: Run, item: Item, rule: GradeRule) -> Reading | None:
    """A graded examination (MRC muscle strength 0–5, as a number, text or coded value)."""
    if not run.valid(item.resource):
        return None
    part = item.part
    raw: object = None
    if isinstance(part.get("valueQuantity"), dict):
        raw = part["valueQuantity"].get("value")
    elif "valueInteger" in part:
        raw = part["valueInteger"]
    elif "valueString" in part:
        raw = part["valueString"]
    elif isinstance(part.get("valueCodeableConcept"), dict):
        raw = next(iter(codeable_texts(part["valueCodeableConcept"])), None)
    grade = parse_grade(raw)
    if grade is None or grade > rule.scale_max:
        run.skip(item.resource, _unread(part))
        return None
    decisive = meets(grade, None, rule.operator, rule.threshold)
    return Reading(decisive, rounded(grade), None, (item,), (run.source(item, rounded(grade), None),), severity=-grade)


def read_ratio_direct(run: Run, item: Item) -> tuple[float, tuple[Source, ...]] | None:
    """A ratio reported as a number (valueQuantity, valueRatio or a numeric string)."""
    if not run.valid(item.resource):
        return None
    part = item.part
    quantity = part.get("valueQuantity")
    number: float | None = None
    if isinstance(quantity, dict):
        number = as_number(quantity.get("value"))
    elif isinstance(part.get("valueRatio"), dict):
        ratio = part["valueRatio"]
        numerator = as_number((ratio.get("numerator") or {}).get("value"))
        denominator = as_number((ratio.get("denominator") or {}).get("value"))
        number = bounded(numerator / denominator) if numerator is not None and denominator else None
    elif "valueString" in part and isinstance(part["valueString"], str):
        number = number_in_text(part["valueString"])
    if number is None or number < 0:
        run.skip(item.resource, _unread(part))
        return None
    return number, (run.source(item, rounded(number), None),)


def read_measure(run: Run, item: Item, unit: str) -> float | None:
    """A positive measurement (weight, height, BMI) in ``unit``."""
    if not run.valid(item.resource):
        return None
    quantity = item.part.get("valueQuantity")
    value = normalise(run, quantity, unit) if isinstance(quantity, dict) else None
    if value is None or value <= 0:
        run.skip(item.resource, SkipReason.UNIT_NOT_CONVERTIBLE if isinstance(quantity, dict) else SkipReason.NO_VALUE)
        return None
    return value


def read_finding_observation(run: Run, item: Item) -> Reading | None:
    """An Observation of a clinical finding: coded as the finding itself, or with a yes/no value."""
    if not run.valid(item.resource):
        return None
    setup = run.setup
    part = item.part
    verdict: Verdict | None
    if item.as_value:
        verdict = Verdict.POSITIVE
    elif "valueBoolean" in part and isinstance(part["valueBoolean"], bool):
        verdict = Verdict.POSITIVE if part["valueBoolean"] else Verdict.NEGATIVE
    elif "valueCodeableConcept" in part:
        verdict = verdict_of_codeable(setup.terminology, setup.answers, part["valueCodeableConcept"])
    elif isinstance(part.get("valueString"), str):
        verdict = verdict_of_text(setup.terminology, setup.answers, part["valueString"])
    elif not has_value(part) and "dataAbsentReason" not in part:
        verdict = Verdict.POSITIVE  # an Observation coded as the finding itself, with no value, records it
    else:
        verdict = None
    if verdict is None:
        run.skip(item.resource, _unread(part))
        return None
    decisive = None if verdict is Verdict.INDETERMINATE else verdict is Verdict.POSITIVE
    shown = value_text(part) or ("recorded" if verdict is Verdict.POSITIVE else verdict.value)
    return Reading(decisive, shown, None, (item,), (run.source(item, None, None, shown),))


def plausible(rule: QuantityRule | RatioRule | BmiRule, value: float) -> bool:
    """Whether ``value`` lies in the rule's plausible range."""
    low, high = rule.plausible_min, rule.plausible_max
    return (low is None or value >= low) and (high is None or value <= high)


def rounded(value: float) -> float:
    """Values as the findings carry them: four decimals."""
    return round(value, 4)
