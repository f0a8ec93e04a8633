"""BMI for age against the WHO growth references: context beside the paper's BMI < 15 cut-off, never a rule.

Pure: no I/O beyond the reference tables that ``rcpchgrowth`` ships inside its package (read once, on first use,
and kept by the library's module), no clock. Nothing here raises on bad input: what cannot be computed comes back
as a :class:`GrowthContext` with ``missing`` set to a reason code, and the card leaves the context out.

The references are the ones ``rcpchgrowth`` selects for ``reference="who"``:

- ``who-2006``: the WHO Child Growth Standards (2006), birth to 5 years. Its daily tables run to day 1856
  (61 months), and ``rcpchgrowth`` uses them up to and including that day;
- ``who-2007``: the WHO Growth Reference (2007), from then to 19 years.

The z-score is WHO's LMS z = ((BMI / M) ** L - 1) / (L · S), with WHO's restricted extension beyond ±3 SD
(the distance past ±3 SD is measured in units of the 2-to-3 SD interval at that age). The centile is the
standard normal CDF of z, in percent. Display text for the reference codes and the reason codes belongs in the
knowledge base / message catalogs, not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from statistics import NormalDist
from typing import Final, NamedTuple

# reference codes (``GrowthContext.reference``)
WHO_2006: Final = "who-2006"
WHO_2007: Final = "who-2007"

# reason codes (``GrowthContext.missing``), in the order they are checked
NO_BMI: Final = "no-bmi"
"""No BMI, or a BMI that is not a number."""
SEX_UNKNOWN: Final = "sex-unknown"
"""Sex is not ``"male"`` or ``"female"`` (FHIR ``Patient.gender`` ``other`` / ``unknown`` / missing)."""
AGE_UNKNOWN: Final = "age-unknown"
"""No birth date or no measurement date (or one that is not a date)."""
OUT_OF_RANGE: Final = "out-of-range"
"""Age below 0 or at least 19 years (outside the references), or a BMI that is not plausible."""
REFERENCE_ERROR: Final = "reference-error"
"""The growth library failed, or gave no finite z-score."""

MAX_AGE_YEARS: Final = 19.0
"""The WHO 2007 reference ends at 19 years; an age at or above it has no BMI-for-age."""

_NORMAL: Final = NormalDist()


@dataclass(frozen=True, slots=True)
class GrowthContext:
    """A child's BMI-for-age, or the reason there is none (``missing``)."""

    z: float | None = None
    """BMI-for-age z-score (SDS), unrounded."""
    centile: float | None = None
    """Centile in percent (0-100), from z, unrounded."""
    reference: str | None = None
    """``"who-2006"`` or ``"who-2007"``; ``None`` when nothing was computed."""
    age_years: float | None = None
    """Decimal age at the measurement (days / 365.25), whenever both dates are known, even if ``missing`` is set."""
    missing: str | None = None
    """``None`` when z and centile are given, else a reason code: ``no-bmi``, ``sex-unknown``, ``age-unknown``,
    ``out-of-range``, ``reference-error``."""


class _Library(NamedTuple):
    sds_for_measurement: Callable[..., object]
    who_2006_upper: float


@cache
def _library() -> _Library:
    """``rcpchgrowth``'s entry point, imported once on first use (the import reads the WHO tables and scipy)."""
    from rcpchgrowth import WHO_2006_REFERENCE_UPPER_THRESHOLD, sds_for_measurement  # type: ignore[import-untyped]

    return _Library(sds_for_measurement, float(WHO_2006_REFERENCE_UPPER_THRESHOLD))


def load_references() -> None:
    """Load the library and its tables now (for a server's start-up), rather than on the first card."""
    _library()


def reference_for_age(age_years: float) -> str:
    """The reference ``rcpchgrowth`` uses at this decimal age (0 to < 19 years)."""
    return WHO_2006 if age_years <= _library().who_2006_upper else WHO_2007


def decimal_age(birth_date: date, measured: date) -> float:
    """Age in decimal years, as ``rcpchgrowth`` computes it (``chronological_decimal_age``): days / 365.25."""
    return (measured - birth_date).days / 365.25


def _as_date(value: object) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return None


def bmi_for_age(
    sex: str | None,
    birth_date: date | None,
    measured: date | None,
    bmi: float | None,
    *,
    plausible: tuple[float | None, float | None] = (None, None),
) -> GrowthContext:
    """The BMI-for-age z-score and centile of a child of ``sex`` (``"male"`` / ``"female"``) born on
    ``birth_date`` whose BMI (kg/m²) was ``bmi`` on ``measured``. ``plausible`` is the knowledge base's range for
    a recorded BMI (``plausible_min`` / ``plausible_max`` of ``bmi_lt_15``): outside it, out-of-range. Never
    raises."""
    try:
        return _bmi_for_age(sex, birth_date, measured, bmi, plausible)
    except Exception:
        # the contract is "never raises": what the checks above let through and still fails is the library's
        return GrowthContext(missing=REFERENCE_ERROR)


def _bmi_for_age(
    sex: object, birth_date: object, measured: object, bmi: object, plausible: tuple[float | None, float | None]
) -> GrowthContext:
    born, on = _as_date(birth_date), _as_date(measured)
    age = decimal_age(born, on) if born is not None and on is not None else None
    if bmi is None or isinstance(bmi, bool) or not isinstance(bmi, int | float):
        return GrowthContext(age_years=age, missing=NO_BMI)
    if sex not in ("male", "female"):
        return GrowthContext(age_years=age, missing=SEX_UNKNOWN)
    if age is None:
        return GrowthContext(missing=AGE_UNKNOWN)
    low = plausible[0] if plausible[0] is not None else 0.0
    high = plausible[1] if plausible[1] is not None else math.inf
    if not (0.0 <= age < MAX_AGE_YEARS and low <= bmi <= high and math.isfinite(bmi)):  # NaN fails every comparison
        return GrowthContext(age_years=age, missing=OUT_OF_RANGE)
    value = float(bmi)
    z = _library().sds_for_measurement(
        reference="who", age=age, measurement_method="bmi", observation_value=value, sex=sex
    )
    if not isinstance(z, int | float) or not math.isfinite(z):
        return GrowthContext(age_years=age, missing=REFERENCE_ERROR)
    return GrowthContext(
        z=float(z), centile=_NORMAL.cdf(float(z)) * 100.0, reference=reference_for_age(age), age_years=age
    )
