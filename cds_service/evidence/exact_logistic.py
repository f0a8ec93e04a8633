"""Exact conditional logistic regression for a single binary predictor (one 2x2 table).

This reproduces the "Exact Parameter Estimates" that SAS PROC LOGISTIC prints with an
``EXACT`` statement (``ESTIMATE=BOTH``) for a model ``outcome = predictor`` on one 2x2
table, which is what Tables 2 and 3 of Wang X et al., Research Square 2020
(DOI 10.21203/rs.3.rs-33774/v1) report.

Model and sufficient statistic
------------------------------
Conditioning on both margins, the number ``T`` of events in the exposed group follows
Fisher's noncentral hypergeometric distribution with log odds ratio ``beta``::

    P(T = t | beta) ∝ C(n1, t) · C(n0, m - t) · exp(beta · t),   max(0, m - n0) <= t <= min(n1, m)

where ``n0``/``n1`` are the reference/exposed group sizes and ``m`` the total number of
events. Everything below is computed from this distribution (log-space, exact integer
binomial weights); there is no asymptotic approximation.

Interior observation (no zero cell, ``t`` strictly inside the support)
    * ``beta``: conditional maximum likelihood estimate, the root of ``E[T | beta] = t``;
    * 95% CI: exact, inverting the two one-sided tests at ``alpha/2`` each:
      ``P(T >= t | low) = alpha/2`` and ``P(T <= t | high) = alpha/2``;
    * P: ``min(1, 2 · min(P(T >= t | 0), P(T <= t | 0)))`` (doubled smaller exact tail).

Boundary observation (a zero cell; ``t`` at the top or the bottom of the support)
    The CMLE is infinite, so SAS reports the *median unbiased estimate*. At the top
    (``t = t_max``) it solves ``P(T >= t | beta) = 1/2`` — which, since ``t`` is the
    largest value, is simply ``P(T = t_max | beta) = 1/2``; at the bottom it solves
    ``P(T <= t | beta) = 1/2``. (The general SAS definition averages the roots of the two
    one-sided equations; at a boundary one of them is infinite and SAS uses the finite
    one alone — that is the convention that reproduces the published values.)
    The confidence interval is one-sided: the finite limit solves the one-sided equation
    at the full ``alpha`` (0.05, not 0.025); the other limit is infinite (odds ratio
    ``inf`` at the top, ``0.0`` at the bottom). The reported P is the single exact tail
    at ``beta = 0``, *not* doubled. ``p_two_sided`` always carries the doubled, capped
    value, so callers can show the two-sided P that the paper's Methods promise.

Degenerate tables
    If the conditional support has a single point (no events at all, only events, or one
    group of size zero) nothing can be estimated, and :func:`exact_conditional_estimate`
    raises :class:`ValueError` rather than returning placeholder numbers.

The root finding is a plain bracketing bisection on monotone functions (each of the
equations above is strictly monotone in ``beta``), run to double precision; it needs only
numpy and takes well under a millisecond per table.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DECIMALS",
    "OR_CAP_HIGH",
    "OR_CAP_LOW",
    "P_CAP_LOW",
    "ExactEstimate",
    "Method",
    "Quantity",
    "exact_conditional_estimate",
    "format_published",
    "matches_published",
]

Method = Literal["cmle", "median_unbiased"]
Quantity = Literal["beta", "odds_ratio", "ci", "p"]

#: Decimals SAS prints for each quantity in the Exact Parameter Estimates / Odds Ratios tables.
DECIMALS: Final[Mapping[Quantity, int]] = MappingProxyType({"beta": 4, "odds_ratio": 3, "ci": 3, "p": 4})

#: Display caps of the SAS ODDSRATIO8.3 and PVALUE6.4 formats.
OR_CAP_HIGH: Final = 999.999
OR_CAP_LOW: Final = 0.001
P_CAP_LOW: Final = 0.0001

# Search interval for beta; |beta| = 64 is an odds ratio of ~6e27, far outside any
# quantity that can be printed (and every equation here has its root well inside).
_BETA_LIMIT: Final = 64.0
_FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ExactEstimate:
    """Exact conditional estimate of the odds ratio of one 2x2 table.

    ``beta`` is the log odds ratio (exposed vs reference): the CMLE, or, when a cell is
    zero, the (always finite) median unbiased estimate. ``ci_low``/``ci_high`` are limits
    of the *odds ratio* (``0.0`` and ``math.inf`` allowed). ``p_value`` is the P as SAS
    (and the paper) report it — one-sided for zero-cell tables — while ``p_two_sided`` is
    always the doubled smaller tail, capped at 1.
    """

    ref_events: int
    ref_n: int
    exp_events: int
    exp_n: int
    alpha: float
    beta: float
    odds_ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    p_two_sided: float
    method: Method
    zero_cell: bool

    @property
    def beta_ci(self) -> tuple[float, float]:
        """Confidence limits on the log odds ratio scale (``-inf``/``inf`` for open ends)."""
        low = -math.inf if self.ci_low == 0.0 else math.log(self.ci_low)
        high = math.inf if math.isinf(self.ci_high) else math.log(self.ci_high)
        return low, high


class _Conditional:
    """Fisher's noncentral hypergeometric distribution of T given the margins."""

    def __init__(self, ref_events: int, ref_n: int, exp_events: int, exp_n: int) -> None:
        events = ref_events + exp_events
        self.t_min = max(0, events - ref_n)
        self.t_max = min(exp_n, events)
        self.t_obs = exp_events
        support = range(self.t_min, self.t_max + 1)
        self.support: _FloatArray = np.array(support, dtype=np.float64)
        # exact integer weights, logged (math.log accepts arbitrarily large ints)
        self.log_weights: _FloatArray = np.array(
            [math.log(math.comb(exp_n, t) * math.comb(ref_n, events - t)) for t in support],
            dtype=np.float64,
        )

    def _log_pmf(self, beta: float) -> _FloatArray:
        x = self.log_weights + beta * self.support
        top = float(x.max())
        return x - (top + math.log(float(np.exp(x - top).sum())))

    def log_upper_tail(self, t: int, beta: float) -> float:
        """log P(T >= t | beta)."""
        lp = self._log_pmf(beta)[self.support >= t]
        top = float(lp.max())
        return top + math.log(float(np.exp(lp - top).sum()))

    def log_lower_tail(self, t: int, beta: float) -> float:
        """log P(T <= t | beta)."""
        lp = self._log_pmf(beta)[self.support <= t]
        top = float(lp.max())
        return top + math.log(float(np.exp(lp - top).sum()))

    def mean(self, beta: float) -> float:
        return float((np.exp(self._log_pmf(beta)) * self.support).sum())


def _root_increasing(f: Callable[[float], float]) -> float:
    """Root of a strictly increasing function of beta by bisection to double precision."""
    lo, hi = -_BETA_LIMIT, _BETA_LIMIT
    if not f(lo) < 0.0 < f(hi):
        raise ArithmeticError("no root in the supported range of beta")  # pragma: no cover
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return mid
        if f(mid) < 0.0:
            lo = mid
        else:
            hi = mid


def _validate(ref_events: int, ref_n: int, exp_events: int, exp_n: int, alpha: float) -> None:
    counts = {"ref_events": ref_events, "ref_n": ref_n, "exp_events": exp_events, "exp_n": exp_n}
    for name, value in counts.items():
        # ints and numpy integers are accepted; bools and floats (even 3.0) are not
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{name} must be an integer count, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if ref_n == 0 or exp_n == 0:
        raise ValueError(f"both groups must be non-empty (ref_n={ref_n}, exp_n={exp_n})")
    if ref_events > ref_n:
        raise ValueError(f"ref_events ({ref_events}) exceeds ref_n ({ref_n})")
    if exp_events > exp_n:
        raise ValueError(f"exp_events ({exp_events}) exceeds exp_n ({exp_n})")
    events = ref_events + exp_events
    if events == 0:
        raise ValueError("no events in either group: the odds ratio is not estimable")
    if events == ref_n + exp_n:
        raise ValueError("every subject had the event: the odds ratio is not estimable")
    if not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def exact_conditional_estimate(
    ref_events: int, ref_n: int, exp_events: int, exp_n: int, alpha: float = 0.05
) -> ExactEstimate:
    """Exact conditional (SAS PROC LOGISTIC EXACT-style) estimate for one binary predictor.

    ``ref_events/ref_n`` are the events and size of the reference (unexposed) group,
    ``exp_events/exp_n`` those of the exposed group; the odds ratio is exposed vs reference.

    Raises ``TypeError`` for non-integer counts and ``ValueError`` for negative counts,
    events exceeding a group size, an empty group, tables with no events or with no
    non-events (the conditional distribution is then a single point and carries no
    information about the odds ratio), and ``alpha`` outside (0, 1).
    """
    _validate(ref_events, ref_n, exp_events, exp_n, alpha)
    ref_events, ref_n = operator.index(ref_events), operator.index(ref_n)
    exp_events, exp_n = operator.index(exp_events), operator.index(exp_n)
    dist = _Conditional(ref_events, ref_n, exp_events, exp_n)
    t = dist.t_obs
    log_half = math.log(0.5)

    def upper_root(target: float) -> float:
        """beta solving P(T >= t | beta) = target (increasing in beta)."""
        log_target = math.log(target)
        return _root_increasing(lambda b: dist.log_upper_tail(t, b) - log_target)

    def lower_root(target: float) -> float:
        """beta solving P(T <= t | beta) = target (decreasing in beta)."""
        log_target = math.log(target)
        return _root_increasing(lambda b: log_target - dist.log_lower_tail(t, b))

    p_upper = math.exp(dist.log_upper_tail(t, 0.0))
    p_lower = math.exp(dist.log_lower_tail(t, 0.0))
    p_two_sided = min(1.0, 2.0 * min(p_upper, p_lower))

    method: Method
    if t == dist.t_max:  # zero cell, T at the top: OR -> +inf
        method = "median_unbiased"
        beta = _root_increasing(lambda b: dist.log_upper_tail(t, b) - log_half)
        ci_low, ci_high = math.exp(upper_root(alpha)), math.inf
        p_value = p_upper
    elif t == dist.t_min:  # zero cell, T at the bottom: OR -> 0
        method = "median_unbiased"
        beta = _root_increasing(lambda b: log_half - dist.log_lower_tail(t, b))
        ci_low, ci_high = 0.0, math.exp(lower_root(alpha))
        p_value = p_lower
    else:
        method = "cmle"
        beta = _root_increasing(lambda b: dist.mean(b) - t)
        ci_low, ci_high = math.exp(upper_root(alpha / 2)), math.exp(lower_root(alpha / 2))
        p_value = p_two_sided
    return ExactEstimate(
        ref_events=ref_events,
        ref_n=ref_n,
        exp_events=exp_events,
        exp_n=exp_n,
        alpha=float(alpha),
        beta=beta,
        odds_ratio=math.exp(beta),
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        p_two_sided=p_two_sided,
        method=method,
        zero_cell=method == "median_unbiased",
    )


def _round_half_up(value: float, decimals: int) -> Decimal:
    """Round the exact binary value half away from zero (as SAS formats do)."""
    return Decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def format_published(value: float, quantity: Quantity, *, drop_trailing_zeros: bool = False) -> str:
    """Print ``value`` the way the paper's SAS tables do.

    ``beta`` and ``p`` with 4 decimals, ``odds_ratio``/``ci`` with 3, rounded half away
    from zero; odds ratios and limits above 999.999 (including ``inf``) print as
    ``>999.999`` and below 0.001 (including 0) as ``<0.001``; P below 0.0001 prints as
    ``<.0001``. SAS keeps trailing zeros (``1.260``, ``0.0120``); the paper's text drops
    them all (``1.26``, ``0.012``, ``3.926``), which ``drop_trailing_zeros=True`` mimics.
    """
    if math.isnan(value):
        raise ValueError("cannot format NaN")
    if quantity in ("odds_ratio", "ci"):
        if value > OR_CAP_HIGH:
            return f">{OR_CAP_HIGH:.3f}"
        if value < OR_CAP_LOW:
            return f"<{OR_CAP_LOW:.3f}"
    elif quantity == "p" and value < P_CAP_LOW:
        return "<.0001"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{_round_half_up(value, DECIMALS[quantity]):f}"
    if drop_trailing_zeros and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def matches_published(computed: float, published: str, decimals: int | None = None) -> bool:
    """Whether ``computed`` agrees with a number as printed in the paper.

    * ``">999.999"`` (any ``">X"``) matches any value strictly above X, ``inf`` included;
      ``"<.0001"`` / ``"<0.001"`` (any ``"<X"``) any value strictly below X, ``0`` included.
    * A plain number matches when ``computed`` rounded half-up to the printed precision
      equals it. ``decimals`` is the precision SAS printed the column with (see
      :data:`DECIMALS`): the paper sometimes drops trailing zeros ("1.26" for SAS's
      "1.260", "0.012" for "0.0120"), so when it is given the comparison is made at
      ``max(printed decimals, decimals)``, i.e. the dropped zeros are restored and must
      match too. Without it the printed decimals alone decide (a looser check).
    """
    text = published.strip()
    if math.isnan(computed):
        return False
    if text.startswith(">"):
        return computed > float(text[1:])
    if text.startswith("<"):
        return computed < float(text[1:])
    if math.isinf(computed):
        return False
    printed = Decimal(text)
    exponent = printed.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite number: {published!r}")
    places = max(-exponent, 0)
    if decimals is not None:
        if places > decimals:
            raise ValueError(f"{published!r} has more than {decimals} decimals")
        places = decimals
    return _round_half_up(computed, places) == printed
