"""Tests for cds_service.evidence.exact_logistic: exact conditional logistic regression on 2x2 tables.

Published numbers are copied from Wang X et al., Research Square 2020,
DOI 10.21203/rs.3.rs-33774/v1, Tables 2 (refractory disease) and 3 (death): for each
predictor, events/group size in the reference and the exposed group, then beta, OR,
95% CI low, 95% CI high and P exactly as printed (SAS output with trailing zeros dropped).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import fisher_exact, nchypergeom_fisher
from scipy.stats.contingency import odds_ratio

from cds_service.evidence.exact_logistic import (
    DECIMALS,
    ExactEstimate,
    Quantity,
    exact_conditional_estimate,
    format_published,
    matches_published,
)


class Row(NamedTuple):
    table: str
    predictor: str
    counts: tuple[int, int, int, int]  # ref_events, ref_n, exp_events, exp_n
    published: tuple[str, str, str, str, str]  # beta, OR, CI low, CI high, P


# fmt: off
ROWS: tuple[Row, ...] = (
    # Table 2 — refractory disease
    Row("table2", "female", (3, 9, 8, 17), ("0.5534", "1.739", "0.257", "14.451", "0.8037")),
    Row("table2", "bmi_lt_15", (6, 18, 5, 7), ("1.5396", "4.663", "0.558", "62.967", "0.2032")),
    Row("table2", "muscle_le_3", (0, 8, 11, 18), ("2.6654", "14.373", "2.461", ">999.999", "0.0041")),
    Row("table2", "edema", (2, 17, 8, 8), ("3.926", "50.705", "8.086", ">999.999", "<.0001")),
    Row("table2", "skin_ulcer", (2, 16, 9, 10), ("3.8559", "47.27", "3.869", ">999.999", "0.0003")),
    Row("table2", "dysphagia", (1, 11, 10, 15), ("2.8634", "17.521", "1.691", "952.094", "0.0089")),
    Row("table2", "symptom", (1, 10, 10, 16), ("2.5977", "13.433", "1.308", "721.398", "0.0219")),
    Row("table2", "ild", (5, 18, 5, 7), ("1.7855", "5.963", "0.698", "82.561", "0.1237")),
    Row("table2", "ana", (3, 14, 8, 12), ("1.9024", "6.702", "0.987", "61.614", "0.0521")),
    Row("table2", "anti_ro52", (6, 19, 5, 7), ("1.6178", "5.042", "0.609", "67.675", "0.1696")),
    Row("table2", "cd4_cd8_lt_1_4", (3, 16, 6, 8), ("2.4221", "11.269", "1.26", "171.48", "0.0255")),
    Row("table2", "ferritin_gt_200", (2, 12, 8, 12), ("2.1876", "8.914", "1.115", "123.379", "0.0361")),
    # Table 3 — death
    Row("table3", "female", (1, 9, 4, 17), ("0.8695", "2.386", "0.188", "136.137", "0.8394")),
    Row("table3", "bmi_lt_15", (1, 18, 4, 7), ("2.9305", "18.737", "1.328", ">999.999", "0.0245")),
    Row("table3", "muscle_le_3", (0, 8, 5, 18), ("1.2982", "3.663", "0.585", ">999.999", "0.1303")),
    Row("table3", "edema", (0, 17, 4, 8), ("2.8369", "17.062", "2.562", ">999.999", "0.0055")),
    Row("table3", "skin_ulcer", (0, 16, 5, 10), ("2.8358", "17.045", "2.722", ">999.999", "0.0038")),
    Row("table3", "dysphagia", (0, 11, 5, 15), ("1.8624", "6.439", "1.044", ">999.999", "0.0457")),
    Row("table3", "symptom", (0, 10, 5, 16), ("1.6794", "5.362", "0.867", ">999.999", "0.0664")),
    Row("table3", "ild", (1, 18, 3, 7), ("2.4074", "11.105", "0.696", "707.076", "0.1051")),
    Row("table3", "ana", (0, 14, 5, 12), ("2.4202", "11.248", "1.819", ">999.999", "0.012")),
    Row("table3", "anti_ro52", (3, 19, 2, 7), ("0.7253", "2.065", "0.136", "24.28", "0.8215")),
    Row("table3", "cd4_cd8_lt_1_4", (1, 16, 3, 8), ("2.0877", "8.066", "0.517", "502.932", "0.1818")),
)
# fmt: on

QUANTITIES: tuple[tuple[str, Quantity], ...] = (
    ("beta", "beta"),
    ("odds_ratio", "odds_ratio"),
    ("ci_low", "ci"),
    ("ci_high", "ci"),
    ("p_value", "p"),
)
_QUANTITY_IDS = ("beta", "odds_ratio", "ci_low", "ci_high", "p")


def _row_id(row: Row) -> str:
    return f"{row.table}-{row.predictor}"


def _has_zero_cell(counts: tuple[int, int, int, int]) -> bool:
    ref_events, ref_n, exp_events, exp_n = counts
    return 0 in (ref_events, ref_n - ref_events, exp_events, exp_n - exp_events)


def _estimate(row: Row) -> ExactEstimate:
    return exact_conditional_estimate(*row.counts)


def _table(counts: tuple[int, int, int, int]) -> npt.NDArray[np.int64]:
    """2x2 table in scipy's orientation: exposed row first, events column first."""
    ref_events, ref_n, exp_events, exp_n = counts
    return np.array([[exp_events, exp_n - exp_events], [ref_events, ref_n - ref_events]], dtype=np.int64)


ZERO_CELL_ROWS = [row for row in ROWS if _has_zero_cell(row.counts)]
INTERIOR_ROWS = [row for row in ROWS if not _has_zero_cell(row.counts)]
PUBLISHED_CASES = [
    pytest.param(row, index, id=f"{_row_id(row)}-{_QUANTITY_IDS[index]}")
    for row in ROWS
    for index in range(len(QUANTITIES))
]


def test_data_covers_the_115_published_numbers() -> None:
    """The transcription has 12 + 11 rows of 5 numbers and 8 zero-cell rows."""
    assert len(ROWS) == 23
    assert len(PUBLISHED_CASES) == 115
    assert sum(row.table == "table2" for row in ROWS) == 12
    assert len(ZERO_CELL_ROWS) == 8


@pytest.mark.parametrize(("row", "index"), PUBLISHED_CASES)
def test_reproduces_published_number(row: Row, index: int) -> None:
    """Each published number is reproduced at the precision SAS printed it (dropped zeros restored)."""
    attribute, quantity = QUANTITIES[index]
    computed = getattr(_estimate(row), attribute)
    published = row.published[index]
    assert matches_published(computed, published, DECIMALS[quantity]), (
        f"{attribute}: computed {computed!r}, published {published!r}"
    )


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_paper_style_formatting_prints_the_published_strings(row: Row) -> None:
    """format_published(..., drop_trailing_zeros=True) prints exactly the paper's strings."""
    estimate = _estimate(row)
    printed = tuple(
        format_published(getattr(estimate, attribute), quantity, drop_trailing_zeros=True)
        for attribute, quantity in QUANTITIES
    )
    assert printed == row.published


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_median_unbiased_estimate_exactly_for_zero_cell_rows(row: Row) -> None:
    """Rows with a zero cell (and only those) use the median unbiased estimate instead of the CMLE."""
    estimate = _estimate(row)
    expected = "median_unbiased" if _has_zero_cell(row.counts) else "cmle"
    assert estimate.method == expected
    assert estimate.zero_cell is _has_zero_cell(row.counts)
    assert math.isfinite(estimate.beta)


@pytest.mark.parametrize("row", ZERO_CELL_ROWS, ids=_row_id)
def test_median_unbiased_estimate_puts_half_the_mass_on_the_observed_extreme(row: Row) -> None:
    """At the median unbiased OR, P(T >= t_max) = P(T = t_max) = 1/2 (checked with scipy's distribution)."""
    ref_events, ref_n, exp_events, exp_n = row.counts
    estimate = _estimate(row)
    dist = nchypergeom_fisher(ref_n + exp_n, exp_n, ref_events + exp_events, estimate.odds_ratio)
    assert exp_events == min(exp_n, ref_events + exp_events)  # all published zero cells are at the top
    assert dist.sf(exp_events - 1) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("row", ZERO_CELL_ROWS, ids=_row_id)
def test_zero_cell_ci_is_one_sided_at_full_alpha(row: Row) -> None:
    """Zero-cell rows: the upper limit is infinite and the lower one solves P(T >= t | OR) = 0.05."""
    ref_events, ref_n, exp_events, exp_n = row.counts
    estimate = _estimate(row)
    dist = nchypergeom_fisher(ref_n + exp_n, exp_n, ref_events + exp_events, estimate.ci_low)
    assert estimate.ci_high == math.inf
    assert dist.sf(exp_events - 1) == pytest.approx(0.05, abs=1e-12)
    low, high = estimate.beta_ci
    assert low == pytest.approx(math.log(estimate.ci_low))
    assert high == math.inf


@pytest.mark.parametrize("row", ZERO_CELL_ROWS, ids=_row_id)
def test_zero_cell_p_is_the_single_tail_and_two_sided_doubles_it(row: Row) -> None:
    """Zero-cell rows report the one-sided exact tail; p_two_sided is twice that, capped at 1."""
    estimate = _estimate(row)
    tail = fisher_exact(_table(row.counts), alternative="greater").pvalue
    assert estimate.p_value == pytest.approx(tail, rel=1e-12)
    assert estimate.p_two_sided == pytest.approx(min(1.0, 2 * tail), rel=1e-12)


@pytest.mark.parametrize("row", INTERIOR_ROWS, ids=_row_id)
def test_interior_rows_agree_with_scipy_conditional_odds_ratio(row: Row) -> None:
    """Rows without a zero cell: CMLE and two-sided exact 95% CI equal scipy's conditional odds ratio."""
    estimate = _estimate(row)
    reference = odds_ratio(_table(row.counts), kind="conditional")
    ci = reference.confidence_interval(0.95)
    assert estimate.odds_ratio == pytest.approx(reference.statistic, rel=1e-9)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


@pytest.mark.parametrize("row", INTERIOR_ROWS, ids=_row_id)
def test_interior_rows_p_is_twice_the_smaller_exact_tail(row: Row) -> None:
    """Rows without a zero cell: the reported P is the doubled smaller one-sided Fisher tail."""
    estimate = _estimate(row)
    greater = fisher_exact(_table(row.counts), alternative="greater").pvalue
    less = fisher_exact(_table(row.counts), alternative="less").pvalue
    assert estimate.p_value == estimate.p_two_sided
    assert estimate.p_value == pytest.approx(min(1.0, 2 * min(greater, less)), rel=1e-12)


def test_death_dysphagia_two_sided_p_is_0_091_while_reported_is_0_0457() -> None:
    """Table 3 dysphagia: the paper prints the one-sided 0.0457; the two-sided P is 0.091."""
    estimate = exact_conditional_estimate(0, 11, 5, 15)
    assert matches_published(estimate.p_value, "0.0457")
    assert matches_published(estimate.p_two_sided, "0.091")
    assert estimate.p_two_sided > 0.05 > estimate.p_value


@pytest.mark.parametrize(
    ("counts", "doubled"),
    [
        pytest.param((0, 8, 11, 18), "0.0082", id="table2-muscle_le_3"),
        pytest.param((0, 17, 4, 8), "0.011", id="table3-edema"),
        pytest.param((0, 16, 5, 10), "0.0077", id="table3-skin_ulcer"),
        pytest.param((0, 14, 5, 12), "0.024", id="table3-ana"),
    ],
)
def test_doubled_p_of_zero_cell_rows(counts: tuple[int, int, int, int], doubled: str) -> None:
    """The two-sided P of the zero-cell rows is the doubled one-sided value quoted in the review."""
    assert matches_published(exact_conditional_estimate(*counts).p_two_sided, doubled)


def test_zero_cell_at_the_bottom_mirrors_the_top() -> None:
    """Swapping exposed and reference groups negates beta, inverts the CI and keeps P (lower boundary)."""
    top = exact_conditional_estimate(0, 8, 11, 18)
    bottom = exact_conditional_estimate(11, 18, 0, 8)
    assert bottom.method == "median_unbiased"
    assert bottom.beta == pytest.approx(-top.beta, abs=1e-12)
    assert bottom.ci_low == 0.0
    assert bottom.ci_high == pytest.approx(1 / top.ci_low, rel=1e-12)
    assert bottom.beta_ci[0] == -math.inf
    assert bottom.p_value == pytest.approx(top.p_value, rel=1e-12)
    assert bottom.p_two_sided == pytest.approx(top.p_two_sided, rel=1e-12)


def test_tampered_count_no_longer_matches_published_numbers() -> None:
    """Edema/refractory with 3/17 instead of 2/17 reproduces none of its five published numbers."""
    published = next(row.published for row in ROWS if _row_id(row) == "table2-edema")
    tampered = exact_conditional_estimate(3, 17, 8, 8)
    matches = [
        matches_published(getattr(tampered, attribute), text, DECIMALS[quantity])
        for (attribute, quantity), text in zip(QUANTITIES, published, strict=True)
        if not text.startswith(">")  # the open upper limit is infinite either way
    ]
    assert not any(matches)


def test_smaller_alpha_widens_the_interval() -> None:
    """A 99% interval contains the 95% interval, and the point estimate does not depend on alpha."""
    at_95 = exact_conditional_estimate(3, 16, 6, 8)
    at_99 = exact_conditional_estimate(3, 16, 6, 8, alpha=0.01)
    assert at_99.ci_low < at_95.ci_low < at_95.odds_ratio < at_95.ci_high < at_99.ci_high
    assert at_99.beta == at_95.beta
    assert at_99.alpha == 0.01


def test_estimate_is_frozen_and_keeps_its_inputs() -> None:
    """ExactEstimate is immutable and records the counts it was computed from."""
    estimate = exact_conditional_estimate(3, 9, 8, 17)
    assert (estimate.ref_events, estimate.ref_n, estimate.exp_events, estimate.exp_n) == (3, 9, 8, 17)
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.beta = 0.0  # type: ignore[misc]


def test_numpy_integer_counts_are_accepted() -> None:
    """Counts given as numpy integers give the same result as plain ints."""
    as_numpy = exact_conditional_estimate(
        np.int64(2),  # type: ignore[arg-type]
        np.int64(12),  # type: ignore[arg-type]
        np.int64(8),  # type: ignore[arg-type]
        np.int64(12),  # type: ignore[arg-type]
    )
    assert as_numpy == exact_conditional_estimate(2, 12, 8, 12)
    assert type(as_numpy.ref_n) is int


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((-1, 9, 8, 17), "ref_events must be >= 0", id="negative-events"),
        pytest.param((3, 9, 8, -17), "exp_n must be >= 0", id="negative-n"),
        pytest.param((10, 9, 8, 17), r"ref_events \(10\) exceeds ref_n \(9\)", id="ref-events-gt-n"),
        pytest.param((3, 9, 18, 17), r"exp_events \(18\) exceeds exp_n \(17\)", id="exp-events-gt-n"),
        pytest.param((0, 0, 8, 17), "both groups must be non-empty", id="empty-reference"),
        pytest.param((3, 9, 0, 0), "both groups must be non-empty", id="empty-exposed"),
        pytest.param((0, 9, 0, 17), "no events in either group", id="no-events"),
        pytest.param((9, 9, 17, 17), "every subject had the event", id="all-events"),
        pytest.param((3, 9, 8, 17, 0.0), r"alpha must be in \(0, 1\)", id="alpha-zero"),
        pytest.param((3, 9, 8, 17, 1.5), r"alpha must be in \(0, 1\)", id="alpha-above-one"),
    ],
)
def test_invalid_input_raises_value_error(args: tuple[float, ...], message: str) -> None:
    """Impossible or non-estimable tables and a bad alpha raise ValueError with a clear message."""
    with pytest.raises(ValueError, match=message):
        exact_conditional_estimate(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((3.0, 9, 8, 17), id="float"),
        pytest.param((True, 9, 8, 17), id="bool"),
        pytest.param(("3", 9, 8, 17), id="str"),
    ],
)
def test_non_integer_counts_raise_type_error(args: tuple[object, ...]) -> None:
    """Counts must be integers: floats, bools and strings raise TypeError."""
    with pytest.raises(TypeError, match="ref_events must be an integer count"):
        exact_conditional_estimate(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("computed", "published", "expected"),
    [
        pytest.param(math.inf, ">999.999", True, id="inf-above-cap"),
        pytest.param(1000.0, ">999.999", True, id="1000-above-cap"),
        pytest.param(999.999, ">999.999", False, id="cap-itself-not-above"),
        pytest.param(952.094, ">999.999", False, id="finite-below-cap"),
        pytest.param(4.16e-5, "<.0001", True, id="tiny-p-below-cap"),
        pytest.param(0.0, "<.0001", True, id="zero-below-cap"),
        pytest.param(0.0001, "<.0001", False, id="cap-itself-not-below"),
        pytest.param(0.0, "<0.001", True, id="zero-or-below-cap"),
        pytest.param(math.inf, "952.094", False, id="inf-is-not-a-number"),
        pytest.param(math.nan, "0.5", False, id="nan-never-matches"),
    ],
)
def test_matches_published_caps(computed: float, published: str, expected: bool) -> None:
    """'>X' matches values strictly above X (inf included), '<X' strictly below X (0 included)."""
    assert matches_published(computed, published) is expected


@pytest.mark.parametrize(
    ("computed", "published", "decimals", "expected"),
    [
        pytest.param(1.26023, "1.26", None, True, id="printed-decimals"),
        pytest.param(1.2649, "1.26", None, True, id="printed-decimals-loose"),
        pytest.param(1.26023, "1.26", 3, True, id="dropped-zero-restored"),
        pytest.param(1.2649, "1.26", 3, False, id="dropped-zero-must-match"),
        pytest.param(0.0120401, "0.012", 4, True, id="p-dropped-zero"),
        pytest.param(0.0124, "0.012", 4, False, id="p-dropped-zero-mismatch"),
        pytest.param(0.55335, "0.5534", 4, True, id="half-rounds-up"),
        pytest.param(0.553349, "0.5534", 4, False, id="below-half-rounds-down"),
    ],
)
def test_matches_published_numbers_by_rounding(
    computed: float, published: str, decimals: int | None, expected: bool
) -> None:
    """Plain numbers match after half-up rounding to the printed (or the column's full) precision."""
    assert matches_published(computed, published, decimals) is expected


def test_matches_published_rejects_more_decimals_than_the_column() -> None:
    """A published string with more decimals than the column precision is a transcription error."""
    with pytest.raises(ValueError, match="more than 3 decimals"):
        matches_published(1.2345, "1.2345", 3)


@pytest.mark.parametrize(
    ("value", "quantity", "expected"),
    [
        pytest.param(3.926022713, "beta", "3.9260", id="beta-4-decimals"),
        pytest.param(1.2602, "ci", "1.260", id="ci-keeps-trailing-zero"),
        pytest.param(0.0120401, "p", "0.0120", id="p-keeps-trailing-zero"),
        pytest.param(4.16e-5, "p", "<.0001", id="p-cap"),
        pytest.param(math.inf, "ci", ">999.999", id="inf-ci-cap"),
        pytest.param(2945.9, "ci", ">999.999", id="finite-ci-cap"),
        pytest.param(0.0, "ci", "<0.001", id="zero-ci-cap"),
        pytest.param(4.6625018, "odds_ratio", "4.663", id="or-3-decimals"),
        pytest.param(1.0, "p", "1.0000", id="p-one"),
    ],
)
def test_format_published(value: float, quantity: Quantity, expected: str) -> None:
    """format_published prints SAS-style: fixed decimals per quantity and the display caps."""
    assert format_published(value, quantity) == expected


def test_format_published_can_drop_trailing_zeros_like_the_paper() -> None:
    """drop_trailing_zeros=True mimics the paper's text ('1.26', '0.012', '1')."""
    assert format_published(1.2602, "ci", drop_trailing_zeros=True) == "1.26"
    assert format_published(0.0120401, "p", drop_trailing_zeros=True) == "0.012"
    assert format_published(1.0, "p", drop_trailing_zeros=True) == "1"
