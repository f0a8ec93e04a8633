"""cds_service.core.growth: BMI for age against the WHO references, and the child's sex read from Patient.gender.

Expected values are computed here from the L, M and S of the WHO tables that rcpchgrowth ships
(``rcpchgrowth/data_tables/who/*.json``) with WHO's formula z = ((BMI / M) ** L - 1) / (L · S), so a change of
library, table or method that moves a result by 0.01 SD fails a test.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from statistics import NormalDist
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.core import growth
from cds_service.core.engine import Engine
from cds_service.core.growth import GrowthContext, bmi_for_age
from cds_service.core.knowledge import load_knowledge
from fhir_mappings import extract_findings
from tests.builders import AT, PID, patient

BORN = date(2016, 1, 1)
Lms = dict[str, float]


@cache
def _table(name: str, sex: str) -> list[Lms]:
    """BMI rows of one packaged WHO table: ``who_children`` (2006, days 731-1856), ``who_2007_children``."""
    text = resources.files("rcpchgrowth.data_tables").joinpath("who", f"{name}.json").read_text()
    rows: list[Lms] = json.loads(text)["measurement"]["bmi"][sex]
    return rows


def _row(name: str, sex: str, age: float) -> Lms:
    """The table's row for exactly this decimal age (the tables are by day, or by month for WHO 2007)."""
    (row,) = [r for r in _table(name, sex) if round(r["decimal_age"], 4) == round(age, 4)]
    return row


def _who_z(row: Lms, bmi: float) -> float:
    return float(((bmi / row["M"]) ** row["L"] - 1) / (row["L"] * row["S"]))


def _at(row: Lms, z: float) -> float:
    """The BMI at ``z`` SD of this row (WHO's inverse of the LMS formula)."""
    return float(row["M"] * (1 + row["L"] * row["S"] * z) ** (1 / row["L"]))


def _on(days: int) -> date:
    return BORN + timedelta(days=days)


# -- known values ---------------------------------------------------------------------------------------------


def test_girl_at_the_who_median_is_z_zero_and_the_50th_centile() -> None:
    """A 4-year-old girl (day 1461) whose BMI is the WHO 2006 median is at z 0, centile 50."""
    median = _row("who_children", "female", 4.0)["M"]
    context = bmi_for_age("female", BORN, _on(1461), median)
    assert context.z == pytest.approx(0.0, abs=0.01)
    assert context.centile == pytest.approx(50.0, abs=0.5)
    assert (context.reference, context.age_years, context.missing) == ("who-2006", 4.0, None)


def test_three_year_old_boy_matches_the_who_2006_lms() -> None:
    """A boy of 1095 days with BMI 15.0 gets the z-score of WHO 2006's L, M, S for that day."""
    expected = _who_z(_row("who_children", "male", 1095 / 365.25), 15.0)
    context = bmi_for_age("male", BORN, _on(1095), 15.0)
    assert context.z == pytest.approx(expected, abs=0.01)
    assert context.z == pytest.approx(-0.497, abs=0.01)
    assert context.reference == "who-2006"


def test_twelve_year_old_girl_matches_the_who_2007_lms() -> None:
    """A girl of exactly 12 years (4383 days, a row of the monthly WHO 2007 table) with BMI 16.0."""
    expected = _who_z(_row("who_2007_children", "female", 12.0), 16.0)
    context = bmi_for_age("female", BORN, _on(4383), 16.0)
    assert context.age_years == 12.0
    assert context.z == pytest.approx(expected, abs=0.01)
    assert context.reference == "who-2007"


def test_centile_is_the_normal_cdf_of_z() -> None:
    """The centile is Φ(z) in percent: a BMI one SD below the median is near the 16th centile."""
    row = _row("who_children", "female", 1096 / 365.25)
    context = bmi_for_age("female", BORN, _on(1096), _at(row, -1.0))
    assert context.z == pytest.approx(-1.0, abs=0.01)
    assert context.centile == pytest.approx(NormalDist().cdf(cast(float, context.z)) * 100, abs=1e-9)
    assert context.centile == pytest.approx(15.87, abs=0.3)


def test_below_minus_three_sd_uses_the_who_restricted_extension() -> None:
    """Beyond -3 SD, z is -3 plus the distance below the -3 SD BMI in units of the -2 to -3 SD interval (WHO)."""
    row = _row("who_children", "male", 1095 / 365.25)
    sd3, sd2 = _at(row, -3.0), _at(row, -2.0)
    expected = -3 + (11.0 - sd3) / (sd2 - sd3)
    context = bmi_for_age("male", BORN, _on(1095), 11.0)
    assert context.z == pytest.approx(expected, abs=0.01)
    assert cast(float, context.z) > _who_z(row, 11.0)


# -- the switch of reference ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "reference"),
    [(731, "who-2006"), (1826, "who-2006"), (1856, "who-2006"), (1857, "who-2007"), (2192, "who-2007")],
)
def test_reference_switches_from_who_2006_to_who_2007_after_five_years(days: int, reference: str) -> None:
    """WHO 2006 up to day 1856 (5 y 1 mo, where its daily tables end), WHO 2007 after, as rcpchgrowth selects."""
    from rcpchgrowth.who import WHO_2007_DATA, who_reference  # type: ignore[import-untyped]

    assert bmi_for_age("female", BORN, _on(days), 15.0).reference == reference
    assert (who_reference(days / 365.25) is WHO_2007_DATA) == (reference == "who-2007")


def test_z_barely_moves_across_the_switch() -> None:
    """The two references meet at 5 years: one day either side of the switch, z differs by under 0.1 SD."""
    before = cast(float, bmi_for_age("male", BORN, _on(1856), 15.0).z)
    after = cast(float, bmi_for_age("male", BORN, _on(1857), 15.0).z)
    assert abs(after - before) < 0.1


def test_decimal_age_is_rcpchgrowth_chronological_age() -> None:
    """Decimal age is computed as rcpchgrowth does (days / 365.25)."""
    from rcpchgrowth import chronological_decimal_age  # type: ignore[import-untyped]

    measured = date(2023, 7, 19)
    assert bmi_for_age("male", BORN, measured, 15.0).age_years == chronological_decimal_age(BORN, measured)


def test_datetime_measurement_is_read_as_its_date() -> None:
    """A measurement time (datetime) counts as its date."""
    moment = datetime(2020, 1, 1, 23, 59, tzinfo=UTC)
    assert bmi_for_age("male", BORN, moment, 15.0) == bmi_for_age("male", BORN, date(2020, 1, 1), 15.0)


# -- what is left out, and why ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sex", [None, "other", "unknown", "", "Male"])
def test_unknown_sex_leaves_the_context_out(sex: str | None) -> None:
    """Without 'male' or 'female' there is no z-score: sex-unknown (the age is still given)."""
    context = bmi_for_age(sex, BORN, _on(1461), 15.0)
    assert (context.z, context.centile, context.reference, context.missing) == (None, None, None, "sex-unknown")
    assert context.age_years == 4.0


@pytest.mark.parametrize(("born", "measured"), [(None, date(2020, 1, 1)), (BORN, None), (None, None)])
def test_unknown_age_leaves_the_context_out(born: date | None, measured: date | None) -> None:
    """Without a birth date or a measurement date there is no z-score: age-unknown."""
    assert bmi_for_age("female", born, measured, 15.0) == GrowthContext(missing="age-unknown")


def test_no_bmi_leaves_the_context_out() -> None:
    """Without a BMI there is nothing to place on the reference: no-bmi."""
    assert bmi_for_age("female", BORN, _on(1461), None) == GrowthContext(age_years=4.0, missing="no-bmi")


@pytest.mark.parametrize("days", [6940, 6939 + 365 * 6])
def test_age_19_or_more_is_out_of_range(days: int) -> None:
    """The WHO 2007 reference ends at 19 years: at or above it, out-of-range."""
    context = bmi_for_age("male", BORN, _on(days), 20.0)
    assert (context.z, context.missing) == (None, "out-of-range")
    assert cast(float, context.age_years) >= 19.0


def test_measurement_before_birth_is_out_of_range() -> None:
    """A measurement dated before the birth date (negative age) is out-of-range."""
    context = bmi_for_age("female", BORN, BORN - timedelta(days=10), 15.0)
    assert (context.z, context.missing) == (None, "out-of-range")


@pytest.mark.parametrize("bmi", [0.0, -15.0, 7.9, 80.1, 1e300, math.nan, math.inf, -math.inf])
def test_implausible_bmi_is_out_of_range(bmi: float) -> None:
    """A BMI outside the knowledge base's plausible 8-80 kg/m² (or not finite) is out-of-range."""
    rule = load_knowledge().predictors["bmi_lt_15"].rule
    plausible = (getattr(rule, "plausible_min", None), getattr(rule, "plausible_max", None))
    assert plausible == (8, 80)
    assert bmi_for_age("female", BORN, _on(1461), bmi, plausible=plausible).missing == "out-of-range"


def test_integer_bmi_is_a_bmi() -> None:
    """An integer BMI is read like the same float."""
    assert bmi_for_age("female", BORN, _on(1461), 15) == bmi_for_age("female", BORN, _on(1461), 15.0)


def test_library_failure_is_a_reference_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the growth library raises, the context is left out with reference-error, never an exception."""

    def broken(**_: object) -> float:
        raise LookupError("no table")

    monkeypatch.setattr(growth, "_library", lambda: growth._Library(broken, 1856 / 365.25))
    assert bmi_for_age("female", BORN, _on(1461), 15.0).missing == "reference-error"


GARBAGE: list[tuple[object, object, object, object]] = [
    ("female", "2016-01-01", _on(1461), 15.0),
    ("female", BORN, "2020-01-01", 15.0),
    ("female", BORN, _on(1461), "15"),
    ("female", BORN, _on(1461), True),
    ("female", BORN, _on(1461), [15.0]),
    ("female", BORN, _on(1461), 10**400),
    (42, BORN, _on(1461), 15.0),
    (["female"], BORN, _on(1461), 15.0),
    ({}, 0, 1.5, object()),
    ("female", date.min, date.max, 15.0),
]


@pytest.mark.parametrize(("sex", "born", "measured", "bmi"), GARBAGE)
def test_garbage_input_never_raises(sex: object, born: object, measured: object, bmi: object) -> None:
    """Arguments of the wrong type or absurd values give a reason code, never an exception or a z-score."""
    context = bmi_for_age(cast(Any, sex), cast(Any, born), cast(Any, measured), cast(Any, bmi))
    assert context.z is None
    assert context.missing in {"no-bmi", "sex-unknown", "age-unknown", "out-of-range", "reference-error"}


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    sex=st.sampled_from(["male", "female"]),
    days=st.integers(min_value=0, max_value=6939),
    bmi=st.floats(min_value=8.0, max_value=80.0),
)
def test_every_plausible_child_gets_a_finite_z_and_a_centile(sex: str, days: int, bmi: float) -> None:
    """Any plausible BMI at any age from birth to under 19 years gives a finite z and a centile in [0, 100]."""
    context = bmi_for_age(sex, BORN, _on(days), bmi)
    assert context.missing is None
    assert math.isfinite(cast(float, context.z))
    assert 0.0 <= cast(float, context.centile) <= 100.0
    assert context.reference in {"who-2006", "who-2007"}


# -- Patient.gender → PatientFindings.sex ---------------------------------------------------------------------


@pytest.mark.parametrize("gender", ["male", "female"])
def test_sex_comes_from_patient_gender(engine: Engine, gender: str) -> None:
    """PatientFindings.sex is the Patient's gender when it is male or female."""
    found = extract_findings(
        [patient(gender=gender)], patient_id=PID, at=AT, terminology=engine.terminology, rules=engine.rules
    )
    assert found.sex == gender


@pytest.mark.parametrize("extra", [{}, {"gender": "other"}, {"gender": "unknown"}])
def test_missing_or_other_gender_gives_no_sex(engine: Engine, extra: dict[str, str]) -> None:
    """A Patient without gender, or with 'other' / 'unknown', has sex None."""
    found = extract_findings(
        [patient(**extra)], patient_id=PID, at=AT, terminology=engine.terminology, rules=engine.rules
    )
    assert found.sex is None
