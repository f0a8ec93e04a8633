"""Property tests of the pure core (issue 13, point 1): generated inputs at the edges never raise.

Dates and date-times at the ends of the calendar (years 0001 and 9999, every offset from -14:00 to +14:00, leap days,
partial dates, garbage), quantities at the edges of floating point (0, -0, 1e-300, 1e308, integers beyond a float,
NaN, every comparator), strings at the edges (empty, NUL, lone surrogates, 10,000 characters, CJK, right-to-left) —
alone for the parsers, and inside Observations, Conditions and Patients fed to ``Engine.assess`` and
``Engine.cards``: never an exception, and every resource accounted for (used, skipped with a reason, or malformed).

Bounded and repeatable: fixed seed (derandomize), ``max_examples`` per test, no example database.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.core.cards import CardContext
from cds_service.core.engine import Engine
from fhir_mappings.dates import parse_fhir_date, parse_fhir_datetime
from fhir_mappings.terminology import MAX_TEXT
from fhir_mappings.values import MAX_MAGNITUDE, as_number, parse_grade, parse_number_text, parse_titer
from tests.builders import AT, ICD10CM, LOCAL, LOINC, PID, SCT, V3INT, coded, condition, obs, patient

PROPERTY = settings(
    max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
CHARTS = settings(PROPERTY, max_examples=200)
AT_THE_ENDS = settings(PROPERTY, max_examples=100)

# -- dates ----------------------------------------------------------------------------------------------------

EDGE_YEARS = st.sampled_from([1, 2, 1900, 1969, 1970, 2000, 2024, 2026, 9998, 9999]) | st.integers(1, 9999)
LEAP_YEARS = st.sampled_from([4, 1600, 2000, 2024, 2028, 9996])


def _offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


OFFSETS = st.sampled_from(["Z", ""]) | st.integers(-14 * 60, 14 * 60).map(_offset)


@st.composite
def fhir_datetimes(draw: st.DrawFn) -> str:
    """A FHIR dateTime or instant: any valid calendar day (leap days included), any time, an optional fraction and
    any offset from -14:00 to +14:00 (or Z, or none)."""
    leap = draw(st.booleans())
    year = draw(LEAP_YEARS if leap else EDGE_YEARS)
    month = 2 if leap else draw(st.integers(1, 12))
    day = 29 if leap else draw(st.integers(1, calendar.monthrange(year, month)[1]))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    fraction = draw(st.sampled_from(["", ".5", ".123", ".123456789"]))
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{draw(OFFSETS)}"


@st.composite
def edge_moments(draw: st.DrawFn) -> str:
    """The first or last day of the calendar at a time and offset that put its UTC moment in the year 0 or 10000
    (unreadable: half of them), or at one that keeps it inside (readable)."""
    first = draw(st.booleans())
    minutes = draw(st.integers(1, 14 * 60))
    if draw(st.booleans()):  # outside: 00:xx+05:00 on 1 January of the year 1 is still the year 0 in UTC
        seconds = draw(st.integers(0, minutes * 60 - 1))
        offset = minutes if first else -minutes
    else:
        seconds = draw(st.integers(0, 86_399))
        offset = -minutes if first else minutes
    if not first:
        seconds = 86_399 - seconds
    day = "0001-01-01" if first else "9999-12-31"
    return f"{day}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}{_offset(offset)}"


PARTIAL_DATES = st.one_of(
    EDGE_YEARS.map(lambda y: f"{y:04d}"),
    st.tuples(EDGE_YEARS, st.integers(1, 12)).map(lambda t: f"{t[0]:04d}-{t[1]:02d}"),
    st.tuples(EDGE_YEARS, st.integers(1, 12), st.integers(1, 28)).map(lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"),
)
GARBAGE_DATES = st.sampled_from(
    [
        "",
        "0000",
        "0000-01-01",
        "10000-01-01",
        "2023-02-29",
        "2024-02-30",
        "2024-13-01",
        "2024-00-10",
        "2026-11-01T24:00:00Z",
        "2026-06-30T23:59:60Z",
        "2026-11-01T10:00:00+14:01",
        "2026-11-01T10:00:00-25:00",
        "2026-11-01T10:00:00+23:59",
        "２０２６-11-01",
        "2026-W47-1",
        "20261101",
        "yesterday",
        "2026-11-01T10:00:00." + "9" * 80 + "Z",
        "\x00",
        "\ud800",
    ]
) | st.text(max_size=40)
ANY_DATE: st.SearchStrategy[Any] = (
    edge_moments()
    | fhir_datetimes()
    | PARTIAL_DATES
    | GARBAGE_DATES
    | st.integers()
    | st.none()
    | st.floats()
    | st.booleans()
)


@given(ANY_DATE)
@PROPERTY
def test_date_parsing_never_raises(value: Any) -> None:
    """Any value as a FHIR date gives an aware UTC datetime or ``None``, never an exception."""
    parsed = parse_fhir_datetime(value)
    assert parsed is None or parsed.utcoffset() == timedelta(0)
    assert parse_fhir_date(value) == (parsed.date() if parsed is not None else None)


@pytest.mark.parametrize("minutes", range(-14 * 60, 14 * 60 + 1, 15), ids=_offset)
def test_every_offset_at_both_ends_of_the_calendar(minutes: int) -> None:
    """At the first and last moment of the calendar, with every offset from -14:00 to +14:00 (in quarter hours),
    a date-time is read exactly when its UTC moment exists, and is ``None`` (unreadable) when it does not."""
    offset = timedelta(minutes=minutes)
    for local in (datetime(1, 1, 1, 0, 0, 0), datetime(9999, 12, 31, 23, 59, 59)):
        text = local.isoformat() + _offset(minutes)
        try:
            expected: datetime | None = (local - offset).replace(tzinfo=UTC)
        except OverflowError:  # the UTC moment is in the year 0 or 10000
            expected = None
        assert parse_fhir_datetime(text) == expected, text


# -- numbers --------------------------------------------------------------------------------------------------

EDGE_NUMBERS: st.SearchStrategy[Any] = (
    st.sampled_from(
        [
            0,
            -0.0,
            1,
            -1,
            1e-300,
            -1e-300,
            5e-324,
            1e15,
            1e16,
            1e308,
            -1e308,
            2**53 + 1,
            2**63,
            2**64,
            10**400,
            -(10**400),
        ]
    )
    | st.floats()
    | st.integers()
    | st.booleans()
)
COMPARATORS = st.sampled_from([None, "<", "<=", ">", ">=", "ad", "=", "", "≈", "＜", 1])


@given(EDGE_NUMBERS)
@PROPERTY
def test_numbers_are_finite_and_bounded_or_refused(value: Any) -> None:
    """A JSON number is read as a finite float of magnitude at most 1e15, or refused (``None``); never raises."""
    number = as_number(value)
    assert number is None or (math.isfinite(number) and abs(number) <= MAX_MAGNITUDE)


# -- strings --------------------------------------------------------------------------------------------------

EDGE_STRINGS: st.SearchStrategy[str] = st.sampled_from(
    [
        "",
        "\x00",
        "NXP2\x00",
        "\ud800",
        "a\udfffb",
        "x" * 10_000,
        "1" * 10_000,
        "1:" * 5_000,
        "抗NXP2抗体 阳性 " * 1_000,
        "\u202eevitisoP 2PXN-itnA\u202c",
        "\u200f" * 10_000,
        "🧪" * 2_500,
        "Positive",
        "Negative",
        "1:160",
        "<1:40",
        ">1000 ng/mL",
        "3+/5",
        "IV级",
    ]
) | st.text(max_size=60)


@given(EDGE_STRINGS)
@PROPERTY
def test_value_text_parsers_never_raise(text: str) -> None:
    """Titers, numbers-in-text and muscle grades read any string without raising, and a number they read is
    finite and bounded."""
    titer = parse_titer(text)
    number = parse_number_text(text)
    grade = parse_grade(text)
    for value in (titer[1] if titer else None, number[1] if number else None):
        assert value is None or (math.isfinite(value) and abs(value) <= MAX_MAGNITUDE)
    assert grade is None or 0.0 <= grade <= 5.0


@given(EDGE_STRINGS, EDGE_STRINGS)
@PROPERTY
def test_text_patterns_see_a_bounded_prefix(engine: Engine, name: str, tail: str) -> None:
    """What the text patterns find in a name does not change when a long tail follows the first 1,000 characters
    (normal names are never longer; a 1 MB text costs no more than its first 1,000 characters)."""
    terminology = engine.terminology
    head = ((name or " ") * (MAX_TEXT // max(len(name), 1) + 1))[:MAX_TEXT]
    assert terminology.concepts_for_text(head + tail) == terminology.concepts_for_text(head)


# -- resources fed to the engine ------------------------------------------------------------------------------

UNITS = st.sampled_from(
    ["ng/mL", "ug/L", "pmol/L", "kg/m2", "cm", "m", "[in_i]", "kg", "g", "[lb_av]", "{ratio}", "%", "Tg/mL", "", "1"]
) | st.text(max_size=8)
OBSERVATION_CODES = st.sampled_from(
    [
        "2276-4",  # ferritin
        "39156-5",  # BMI
        "8302-2",  # body height
        "29463-7",  # body weight
        "54218-3",  # CD4/CD8
        "8123-2",  # CD4 %
        "8101-8",  # CD8 %
        "5048-4",  # ANA titer
        "8061-4",  # ANA
        "53016-2",  # Ro52
    ]
)
CONDITION_CODES = st.sampled_from(["M33.00", "M33.02", "R60.0", "L98.411", "R13.12", "J84.10", "Z00.0"])
STATUSES = st.sampled_from(["final", "amended", "corrected", "preliminary", "registered", "cancelled"]) | EDGE_STRINGS


@st.composite
def quantities(draw: st.DrawFn) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": draw(EDGE_NUMBERS), "unit": draw(UNITS)}
    if draw(st.booleans()):
        quantity |= {"system": "http://unitsofmeasure.org", "code": quantity["unit"]}
    comparator = draw(COMPARATORS)
    if comparator is not None:
        quantity["comparator"] = comparator
    return quantity


@st.composite
def values(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["quantity", "string", "coded", "ratio", "integer", "boolean", "none"]))
    if kind == "quantity":
        return {"valueQuantity": draw(quantities())}
    if kind == "string":
        return {"valueString": draw(EDGE_STRINGS)}
    if kind == "coded":
        code = draw(st.sampled_from(["10828004", "260385009", "82334004", "x"]))
        return {"valueCodeableConcept": coded(SCT, code, draw(EDGE_STRINGS) or None)}
    if kind == "ratio":
        return {"valueRatio": {"numerator": draw(quantities()), "denominator": draw(quantities())}}
    if kind == "integer":
        return {"valueInteger": draw(EDGE_NUMBERS)}
    if kind == "boolean":
        return {"valueBoolean": draw(st.booleans())}
    return {}


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    local = draw(st.booleans())
    code = "MYO-NXP2" if local else draw(OBSERVATION_CODES)
    resource = obs(
        code,
        system=LOCAL if local else LOINC,
        text=draw(st.sampled_from(["NXP2 (Nuclear matrix protein-2) Ab", "抗NXP2抗体"]) | EDGE_STRINGS) or None,
        display=draw(EDGE_STRINGS) or None,
        when=draw(ANY_DATE),
        status=draw(STATUSES),
        **draw(values()),
    )
    date_key = draw(st.sampled_from(["effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"]))
    if date_key != "effectiveDateTime":
        when = resource.pop("effectiveDateTime")
        resource[date_key] = {"start": draw(ANY_DATE), "end": when} if date_key == "effectivePeriod" else when
    if draw(st.booleans()):
        resource["interpretation"] = [coded(V3INT, draw(st.sampled_from(["POS", "NEG", "IND", "H", "x"])))]
    if draw(st.booleans()):
        resource["referenceRange"] = [{"high": draw(quantities()), "text": draw(EDGE_STRINGS)}]
    return resource


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    resource = condition(
        draw(CONDITION_CODES),
        system=draw(st.sampled_from([ICD10CM, SCT, LOCAL])),
        clinical=draw(st.sampled_from(["active", "resolved", "remission", None]) | EDGE_STRINGS),
        verification=draw(st.sampled_from(["confirmed", "provisional", "refuted", None]) | EDGE_STRINGS),
    )
    for key in ("onsetDateTime", "recordedDate"):
        if draw(st.booleans()):
            resource[key] = draw(ANY_DATE)
    if draw(st.booleans()):
        resource["onsetPeriod"] = {"start": draw(ANY_DATE)}
    if draw(st.booleans()):
        resource["onsetAge"] = {"value": draw(EDGE_NUMBERS), "code": draw(st.sampled_from(["a", "mo", "wk", "d", "x"]))}
    if draw(st.booleans()):
        resource["code"]["text"] = draw(EDGE_STRINGS)
    return resource


@st.composite
def patients(draw: st.DrawFn) -> dict[str, Any]:
    resource = patient(birth=draw(ANY_DATE))
    resource["gender"] = draw(st.sampled_from(["female", "male", "other", "unknown"]) | EDGE_STRINGS)
    resource["name"] = [{"family": draw(EDGE_STRINGS)}]
    return resource


def _anchor() -> list[dict[str, Any]]:
    """An anti-NXP2 positive child with JDM, so most generated charts reach the risk cards and every predictor."""
    positive = obs("MYO-NXP2", system=LOCAL, text="NXP2 Ab", valueCodeableConcept=coded(SCT, "10828004", "Positive"))
    return [positive, condition("M33.00")]


AT_EDGES = st.sampled_from(
    [AT, AT, AT, datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]
)
CONTEXT = CardContext(hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", patient_id=PID, user_id="Practitioner/p")


def _assess_and_render(engine: Engine, chart: list[Any], at: datetime, language: str) -> None:
    assessment = engine.assess(chart, patient_id=PID, at=at)
    findings = assessment.findings
    assert findings.resources_seen == findings.resources_used + sum(findings.skipped.values()) + findings.malformed
    for card in engine.cards(assessment, replace(CONTEXT, language=language)):
        assert card["summary"]
        assert len(card["summary"]) < 140


@given(
    st.lists(observations(), max_size=6),
    st.lists(conditions(), max_size=4),
    st.none() | patients(),
    st.booleans(),
    st.sampled_from(["en", "zh-CN"]),
)
@CHARTS
def test_generated_charts_never_raise_and_account_for_every_resource(
    engine: Engine,
    observations_: list[dict[str, Any]],
    conditions_: list[dict[str, Any]],
    patient_: dict[str, Any] | None,
    anchored: bool,
    language: str,
) -> None:
    """Observations, Conditions and a Patient with edge dates, quantities and strings are assessed and rendered as
    cards without an exception, and every resource is used, skipped with a reason, or counted malformed."""
    chart: list[Any] = [*observations_, *conditions_, *(_anchor() if anchored else [])]
    if patient_ is not None:
        chart.insert(0, patient_)
    _assess_and_render(engine, chart, AT, language)


@given(st.lists(observations() | conditions(), min_size=1, max_size=4), st.none() | patients(), AT_EDGES)
@AT_THE_ENDS
def test_evaluation_time_at_the_ends_of_the_calendar_never_raises(
    engine: Engine, resources: list[dict[str, Any]], patient_: dict[str, Any] | None, at: datetime
) -> None:
    """An evaluation time near the year 1 or 9999 (``nxp2-cds evaluate --at``) still gives findings and cards:
    look-back windows and the future tolerance are held at the calendar's ends."""
    chart: list[Any] = [*resources, *_anchor()]
    if patient_ is not None:
        chart.insert(0, patient_)
    _assess_and_render(engine, chart, at, "en")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40))
def test_escaped_text_renders_as_itself_in_commonmark(text: str) -> None:
    """Any text through escape_markdown renders (CommonMark, inside a paragraph) as that text with its whitespace
    collapsed: no emphasis, link, code, heading, list or HTML comes out of it."""
    import html

    from markdown_it import MarkdownIt

    from cds_service.core.cards import escape_markdown

    flat = " ".join(text.split())
    rendered = MarkdownIt("commonmark").render("x " + escape_markdown(text)).strip()
    assert rendered == f"<p>x {html.escape(flat, quote=True)}</p>".replace("&#x27;", "'") or not flat
