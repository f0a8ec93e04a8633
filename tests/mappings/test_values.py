"""Reading values: titers, grades, comparators, verdicts, dates and units."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from fhir_mappings import Terminology, UnitConverter
from fhir_mappings.dates import completed_years, parse_fhir_datetime
from fhir_mappings.units import conversion_factor
from fhir_mappings.values import AnswerSets, Verdict, meets, parse_grade, parse_titer, verdict_of_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:160", (None, 160.0)),
        ("1/80", (None, 80.0)),
        (" 1 : 40 ", (None, 40.0)),
        ("<1:40", ("<", 40.0)),
        (">=1:1280", (">=", 1280.0)),
        ("≥1:640", (">=", 640.0)),
        ("160", None),
        ("2:160", None),
        ("positive", None),
    ],
)
def test_parse_titer(text: str, expected: tuple[str | None, float] | None) -> None:
    """Titers are read from '1:N' and '1/N' with an optional comparator; anything else is not a titer."""
    assert parse_titer(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (4.5, 4.5),
        ("3/5", 3.0),
        ("3+", 3 + 1 / 3),
        ("4-", 4 - 1 / 3),
        ("MRC 2", 2.0),
        ("grade 5/5", 5.0),
        ("6", None),
        (7, None),
        ("weak", None),
        (True, None),
    ],
)
def test_parse_grade(value: object, expected: float | None) -> None:
    """MRC grades are read from numbers and text; '+'/'-' move the grade by a third; out of range is None."""
    result = parse_grade(value)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "comparator", "operator", "threshold", "expected"),
    [
        (250, None, ">", 200, True),
        (200, None, ">", 200, False),
        (2000, ">", ">", 200, True),
        (500, "<", ">", 200, None),
        (150, "<", ">", 200, False),
        (200, "<=", ">", 200, False),
        (1.4, None, "<", 1.4, False),
        (1.5, "<", "<", 1.4, None),
        (1.4, "<", "<", 1.4, True),
        (3, None, "<=", 3, True),
        (80, None, ">=", 80, True),
        (80, ">", ">=", 80, True),
        (40, "<", ">=", 80, False),
    ],
)
def test_meets_with_comparators(
    value: float, comparator: str | None, operator: str, threshold: float, expected: bool | None
) -> None:
    """A value with a comparator meets a threshold, fails it, or leaves it open."""
    assert meets(value, comparator, operator, threshold) is expected


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Positive", Verdict.POSITIVE),
        ("weakly positive", Verdict.POSITIVE),
        ("DETECTED", Verdict.POSITIVE),
        ("Not detected", Verdict.NEGATIVE),
        ("negative (<1:40)", Verdict.NEGATIVE),
        ("Non-reactive", Verdict.NEGATIVE),
        ("Equivocal", Verdict.INDETERMINATE),
        ("borderline positive", Verdict.INDETERMINATE),
        ("see comment", None),
    ],
)
def test_verdict_of_text(terminology: Terminology, text: str, verdict: Verdict | None) -> None:
    """Result text: indeterminate first, then negative ('not detected'), then positive."""
    assert verdict_of_text(terminology, AnswerSets(), text) is verdict


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-05", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-06", datetime(2024, 5, 6, tzinfo=UTC)),
        ("2024-05-06T10:00:00Z", datetime(2024, 5, 6, 10, tzinfo=UTC)),
        ("2024-05-06T12:00:00+02:00", datetime(2024, 5, 6, 10, tzinfo=UTC)),
        ("2024-05-06T10:00:00", datetime(2024, 5, 6, 10, tzinfo=UTC)),
        ("2024-13", None),
        ("yesterday", None),
        (20240506, None),
    ],
)
def test_parse_fhir_datetime(raw: object, expected: datetime | None) -> None:
    """FHIR dates, partial dates and date-times become aware UTC datetimes; junk becomes None."""
    assert parse_fhir_datetime(raw) == expected


@pytest.mark.parametrize(
    ("birth", "on", "years"),
    [
        (date(2010, 6, 15), date(2026, 6, 14), 15),
        (date(2010, 6, 15), date(2026, 6, 15), 16),
        (date(2008, 2, 29), date(2026, 2, 28), 17),
        (date(2008, 2, 29), date(2026, 3, 1), 18),
    ],
)
def test_completed_years(birth: date, on: date, years: int) -> None:
    """Age counts completed years; a 29 February birthday completes on 1 March in common years."""
    assert completed_years(birth, on) == years


@pytest.mark.parametrize(
    ("source", "target", "factor"),
    [
        ("ug/L", "ng/mL", 1.0),
        ("[lb_av]", "kg", 0.45359237),
        ("[in_i]", "m", 0.0254),
        ("g", "kg", 0.001),
        ("10*3/uL", "/uL", 1000.0),
    ],
)
def test_ucum_conversion_factors(source: str, target: str, factor: float) -> None:
    """UCUM conversions come from ucumvert."""
    assert conversion_factor(source, target) == pytest.approx(factor)


@pytest.mark.parametrize(("source", "target"), [("pmol/L", "ng/mL"), ("kg", "m"), ("not a unit", "kg")])
def test_incommensurable_units_do_not_convert(source: str, target: str) -> None:
    """Units of different dimensions, or no unit at all, give no factor."""
    assert conversion_factor(source, target) is None


def test_free_text_units_go_through_aliases() -> None:
    """A Quantity with only a human-readable unit is mapped to UCUM through the aliases."""
    converter = UnitConverter({"mcg/L": "ug/L", "lbs": "[lb_av]"})
    assert (converter.ucum_of({"unit": "mcg/l"}), converter.ucum_of({"unit": "LBS"})) == ("ug/L", "[lb_av]")


def test_ucum_code_is_preferred_over_the_display_unit() -> None:
    """When the Quantity carries a UCUM code, the code is used, not the display text."""
    converter = UnitConverter()
    quantity = {"unit": "micrograms per litre", "system": "http://unitsofmeasure.org", "code": "ug/L"}
    assert converter.ucum_of(quantity) == "ug/L"
