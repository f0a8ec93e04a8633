"""FHIR ``date`` / ``dateTime`` / ``instant`` strings → aware datetimes, and where a resource keeps its date.

Partial dates (``2024``, ``2024-05``) mean the start of the period. Values without a time zone are read as UTC.
Nothing here raises on bad input: an unreadable date is ``None`` and the caller records why. Unreadable includes
what Python's calendar cannot hold: ``0001-01-01T00:00:00+01:00`` is a moment of the year 0 in UTC, and
``9999-12-31T23:59:59-01:00`` one of the year 10000; and a time-zone offset beyond FHIR's -14:00..+14:00.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")
_MAX_LENGTH = 64
"""Longer than any FHIR instant (``2024-05-01T10:00:00.123456789+14:00`` is 35 characters): not a date."""
_MAX_OFFSET = timedelta(hours=14)


def parse_fhir_datetime(value: object) -> datetime | None:
    """Parse a FHIR date, dateTime or instant into an aware UTC datetime, or ``None`` if it is not one."""
    if not isinstance(value, str) or not 4 <= len(value) <= _MAX_LENGTH:
        return None
    if len(value) <= 7:
        m = _PARTIAL.match(value)
        if m is None:
            return None
        try:
            return datetime(int(m.group(1)), int(m.group(2) or 1), 1, tzinfo=UTC)
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if len(value) == 10 and "T" not in value:
        # a plain date: fromisoformat gives midnight, naive
        return parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    offset = parsed.utcoffset()
    if offset is None or abs(offset) > _MAX_OFFSET:
        return None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # the UTC moment falls outside the years 1..9999
        return None


def parse_fhir_date(value: object) -> date | None:
    parsed = parse_fhir_datetime(value)
    return parsed.date() if parsed is not None else None


def observation_effective(resource: dict[str, Any]) -> tuple[datetime | None, str | None]:
    """The clinically relevant time of an Observation: effectiveDateTime / effectiveInstant, the end (else the
    start) of effectivePeriod, else ``issued``. Returns ``(parsed, as recorded)``."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        raw = resource.get(key)
        if raw is not None:
            return parse_fhir_datetime(raw), raw if isinstance(raw, str) else None
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        for key in ("end", "start"):
            raw = period.get(key)
            if raw is not None:
                return parse_fhir_datetime(raw), raw if isinstance(raw, str) else None
    raw = resource.get("issued")
    if raw is not None:
        return parse_fhir_datetime(raw), raw if isinstance(raw, str) else None
    return None, None


def condition_effective(resource: dict[str, Any]) -> tuple[datetime | None, str | None]:
    """When a Condition was recorded as starting: onsetDateTime, onsetPeriod.start, else recordedDate."""
    raw = resource.get("onsetDateTime")
    if raw is None:
        period = resource.get("onsetPeriod")
        raw = period.get("start") if isinstance(period, dict) else None
    if raw is None:
        raw = resource.get("recordedDate")
    if raw is None:
        return None, None
    return parse_fhir_datetime(raw), raw if isinstance(raw, str) else None


def completed_years(birth: date, on: date) -> int:
    """Age in completed years (a birthday on 29 February counts on 1 March in common years)."""
    years = on.year - birth.year
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years


def days_before(at: datetime, days: int) -> datetime:
    return shifted(at, -timedelta(days=days))


def shifted(at: datetime, delta: timedelta) -> datetime:
    """``at + delta``, held at the ends of the calendar instead of raising ``OverflowError`` (an evaluation time near
    the year 1 or 9999 still gets a look-back window and a future tolerance)."""
    try:
        return at + delta
    except OverflowError:
        return (datetime.min if delta < timedelta(0) else datetime.max).replace(tzinfo=at.tzinfo)
