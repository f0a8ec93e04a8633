"""Evidence you can audit: recompute the knowledge base's tables, refit them on a site's own cohort.

- :func:`verify` recomputes beta, OR, 95% CI and P of every row from its 2x2 counts with exact conditional
  logistic regression (:mod:`exact_logistic`) and compares each with the published value at its printed precision.
- :func:`read_cohort` reads a site's cohort (one row per patient; predictor and outcome columns true/false/blank)
  and names the line and column of anything it cannot read; :func:`fit` computes the same statistics and returns
  a knowledge base (the base one with its evidence replaced).
- :func:`cohort_from_counts` rebuilds a per-patient cohort consistent with every 2x2 table of a knowledge base —
  the paper's cohort as a CSV a site can copy the format from (synthetic patients, not the real ones).

Pure: reading and writing files happens in the command line, not here.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from cds_service.core.knowledge import KnowledgeBase, Row, parse_knowledge
from cds_service.evidence.exact_logistic import (
    DECIMALS,
    ExactEstimate,
    Quantity,
    exact_conditional_estimate,
    format_published,
    matches_published,
)

QUANTITIES: tuple[tuple[str, Quantity], ...] = (
    ("beta", "beta"),
    ("odds_ratio", "odds_ratio"),
    ("ci_low", "ci"),
    ("ci_high", "ci"),
    ("p", "p"),
)
TRUE = frozenset({"true", "1", "yes", "y", "t"})
FALSE = frozenset({"false", "0", "no", "n", "f"})
BLANK = frozenset({"", "na", "n/a", "unknown", "."})


# -- verification --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedNumber:
    name: str
    published: str
    computed: float
    ok: bool

    @property
    def computed_text(self) -> str:
        quantity = dict(QUANTITIES).get(self.name, "p")
        return format_published(self.computed, quantity, drop_trailing_zeros=True)


@dataclass(frozen=True)
class CheckedRow:
    outcome_id: str
    row: Row
    estimate: ExactEstimate | None
    numbers: tuple[CheckedNumber, ...]
    two_sided: CheckedNumber | None
    ratios_ok: bool
    error: str | None = None

    @property
    def reproduced(self) -> int:
        return sum(n.ok for n in self.numbers)


@dataclass(frozen=True)
class Verification:
    rows: tuple[CheckedRow, ...]

    @property
    def reproduced(self) -> int:
        return sum(r.reproduced for r in self.rows)

    @property
    def total(self) -> int:
        return len(self.rows) * len(QUANTITIES)

    @property
    def two_sided(self) -> tuple[int, int]:
        checked = [r.two_sided for r in self.rows if r.two_sided is not None]
        return sum(c.ok for c in checked), len(checked)

    @property
    def ok(self) -> bool:
        return self.reproduced == self.total and self.two_sided[0] == self.two_sided[1]


def _ratio_matches(rate: float, printed: str) -> bool:
    return matches_published(rate * 100, printed)


def verify(knowledge: KnowledgeBase) -> Verification:
    rows: list[CheckedRow] = []
    for outcome_id, outcome in knowledge.outcomes.items():
        for row in outcome.rows:
            try:
                estimate = exact_conditional_estimate(
                    row.reference.events, row.reference.n, row.exposed.events, row.exposed.n
                )
            except (ValueError, TypeError) as exc:
                numbers = tuple(
                    CheckedNumber(name, getattr(row.published, name), math.nan, False) for name, _ in QUANTITIES
                )
                rows.append(CheckedRow(outcome_id, row, None, numbers, None, False, str(exc)))
                continue
            numbers = tuple(
                CheckedNumber(
                    name,
                    getattr(row.published, name),
                    getattr(estimate, name if name != "p" else "p_value"),
                    matches_published(
                        getattr(estimate, name if name != "p" else "p_value"),
                        getattr(row.published, name),
                        DECIMALS[quantity],
                    ),
                )
                for name, quantity in QUANTITIES
            )
            two_sided = None
            if row.p_two_sided is not None:
                two_sided = CheckedNumber(
                    "p_two_sided",
                    row.p_two_sided,
                    estimate.p_two_sided,
                    matches_published(estimate.p_two_sided, row.p_two_sided, DECIMALS["p"]),
                )
            ratios_ok = row.published_ratio is None or (
                _ratio_matches(row.reference.rate, row.published_ratio.reference)
                and _ratio_matches(row.exposed.rate, row.published_ratio.exposed)
            )
            rows.append(CheckedRow(outcome_id, row, estimate, numbers, two_sided, ratios_ok))
    return Verification(tuple(rows))


def render_verification(result: Verification, knowledge: KnowledgeBase) -> str:
    """A text table: every row's counts, each published number beside the recomputed one, and the tally."""
    header = ("outcome", "row", "ref", "exposed", "beta", "OR", "95% CI low", "95% CI high", "P", "two-sided P")
    lines: list[Sequence[str]] = [header]
    for checked in result.rows:
        row = checked.row
        cells = [
            checked.outcome_id,
            row.row,
            f"{row.reference.events}/{row.reference.n}",
            f"{row.exposed.events}/{row.exposed.n}",
        ]
        for number in checked.numbers:
            mark = "ok" if number.ok else "MISMATCH"
            shown = number.computed_text if checked.estimate is not None else "-"
            cells.append(f"{number.published} ({shown} {mark})" if not number.ok else f"{number.published} ok")
        if checked.two_sided is not None:
            cells.append(f"{checked.two_sided.published} {'ok' if checked.two_sided.ok else 'MISMATCH'}")
        else:
            cells.append("")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    for checked in result.rows:
        if checked.error:
            out.append(f"{checked.outcome_id}/{checked.row.row}: cannot estimate: {checked.error}")
    mismatched_ratios = [c for c in result.rows if not c.ratios_ok]
    for checked in mismatched_ratios:
        known = [d for d in checked.row.defects if d == "bmi-death-ratio"]
        note = f" (known defect: {knowledge.defects[known[0]].title})" if known else ""
        out.append(f"outcome ratio of {checked.outcome_id}/{checked.row.row} differs from the counts{note}")
    passed, checked_two = result.two_sided
    out.append(f"two-sided P of zero-cell rows: {passed}/{checked_two}")
    out.append(f"reproduced: {result.reproduced}/{result.total}")
    return "\n".join(out)


# -- a site's cohort -----------------------------------------------------------------------------------


class CohortError(ValueError):
    """A cohort file that cannot be used; the message names the line and the column."""


@dataclass(frozen=True)
class Cohort:
    columns: tuple[str, ...]
    patients: tuple[Mapping[str, bool | None], ...]


def cohort_columns(knowledge: KnowledgeBase) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(predictor row columns, outcome columns)`` a cohort file for this knowledge base uses."""
    rows: list[str] = []
    for outcome in knowledge.outcomes.values():
        rows.extend(r.row for r in outcome.rows if r.row not in rows)
    return tuple(rows), tuple(knowledge.outcomes)


def read_cohort(text: str, knowledge: KnowledgeBase, *, name: str = "cohort") -> Cohort:
    """Parse a cohort CSV: a header, then one line per patient; cells true/false/1/0/yes/no, or blank for not
    recorded. Every outcome column is required, and every predictor that drives a tier; other known predictor
    columns are optional; unknown columns (a patient number, say) are ignored."""
    row_columns, outcome_columns = cohort_columns(knowledge)
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
    except csv.Error as exc:
        raise CohortError(f"{name}: not a CSV file: {exc}") from exc
    if header is None or not any(h.strip() for h in header):
        raise CohortError(f"{name}: line 1: the header is missing")
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if h and header.count(h) > 1})
    if duplicates:
        raise CohortError(f"{name}: line 1: columns named twice: {', '.join(duplicates)}")
    drivers = {d for o in knowledge.outcomes.values() for d in o.drivers}
    required = list(outcome_columns) + [c for c in row_columns if c in drivers]
    missing = [c for c in required if c not in header]
    if missing:
        raise CohortError(f"{name}: line 1: required columns missing: {', '.join(missing)}")
    used = [c for c in header if c in row_columns or c in outcome_columns]
    patients: list[dict[str, bool | None]] = []
    try:
        for line_number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise CohortError(f"{name}: line {line_number}: {len(cells)} cells, the header has {len(header)}")
            patient: dict[str, bool | None] = {}
            for column, cell in zip(header, cells, strict=True):
                if column in used:
                    patient[column] = _cell(cell, name, line_number, column)
            patients.append(patient)
    except csv.Error as exc:
        raise CohortError(f"{name}: line {reader.line_num}: {exc}") from exc
    if not patients:
        raise CohortError(f"{name}: no patients (only a header)")
    return Cohort(tuple(used), tuple(patients))


def _cell(cell: str, name: str, line: int, column: str) -> bool | None:
    value = cell.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    if value in BLANK:
        return None
    raise CohortError(f"{name}: line {line}, column '{column}': {cell.strip()!r} is not true, false or blank")


def two_by_two(cohort: Cohort, column: str, outcome: str) -> tuple[int, int, int, int]:
    """``(reference events, reference n, exposed events, exposed n)`` over patients with both recorded."""
    ref_events = ref_n = exp_events = exp_n = 0
    for patient in cohort.patients:
        exposed, event = patient.get(column), patient.get(outcome)
        if exposed is None or event is None:
            continue
        if exposed:
            exp_n += 1
            exp_events += event
        else:
            ref_n += 1
            ref_events += event
    return ref_events, ref_n, exp_events, exp_n


def _printed(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


def fit(cohort: Cohort, base: KnowledgeBase, *, label: str, description: str, today: date) -> KnowledgeBase:
    """A knowledge base like ``base`` whose counts and estimates come from ``cohort`` (same method). Rows whose
    column is absent from the cohort are dropped unless they drive a tier (then the cohort is refused)."""
    data = base.model_dump(mode="json", exclude_none=True)
    for outcome_id, outcome in base.outcomes.items():
        drivers = set(outcome.drivers)
        fitted_rows: list[dict[str, Any]] = []
        for row, row_data in zip(outcome.rows, data["outcomes"][outcome_id]["rows"], strict=True):
            if row.row not in cohort.columns:
                continue
            counts = two_by_two(cohort, row.row, outcome_id)
            try:
                estimate = exact_conditional_estimate(*counts)
            except ValueError as exc:
                if row.predictor in drivers:
                    raise CohortError(f"column '{row.row}' for {outcome_id}: cannot estimate ({exc})") from exc
                continue
            ref_events, ref_n, exp_events, exp_n = counts
            row_data["reference"] |= {"events": ref_events, "n": ref_n}
            row_data["exposed"] |= {"events": exp_events, "n": exp_n}
            row_data["published"] = {
                name: format_published(
                    getattr(estimate, name if name != "p" else "p_value"), quantity, drop_trailing_zeros=True
                )
                for name, quantity in QUANTITIES
            }
            row_data["published_ratio"] = {
                "reference": _printed(ref_events / ref_n * 100),
                "exposed": _printed(exp_events / exp_n * 100),
            }
            # the paper's own defects and notes do not carry over to a site's cohort; the reporting convention does
            row_data.pop("note", None)
            row_data["defects"] = ["one-sided-zero-cell"] if estimate.zero_cell else []
            if estimate.zero_cell:
                row_data["p_two_sided"] = format_published(estimate.p_two_sided, "p", drop_trailing_zeros=True)
            else:
                row_data.pop("p_two_sided", None)
            fitted_rows.append(row_data)
        events = [p.get(outcome_id) for p in cohort.patients if p.get(outcome_id) is not None]
        data["outcomes"][outcome_id]["rows"] = fitted_rows
        data["outcomes"][outcome_id]["events"] = sum(1 for e in events if e)
        data["outcomes"][outcome_id]["n"] = len(events)
    n = len(cohort.patients)
    data["source"] |= {
        "id": f"site-fit-{today.isoformat()}",
        "version": today.isoformat(),
        "label": label,
        "cohort": description,
        "citation": (
            f"{label}: a local cohort of {n} patients fitted with nxp2-cds evidence fit on {today.isoformat()}, "
            f"with the method of {base.source.citation}"
        ),
        "caveat": (
            f"Univariate associations from this site's own cohort of {n} patients (exact conditional logistic "
            "regression per predictor); not a validated or multivariable risk score."
        ),
    }
    return parse_knowledge(data, origin=Path("<fitted knowledge base>"))


# -- the paper's cohort, rebuilt from its counts --------------------------------------------------------


def cohort_from_counts(knowledge: KnowledgeBase) -> Cohort:
    """A per-patient cohort whose 2x2 tables (every row, every outcome) equal the knowledge base's. The patients
    are synthetic: only the tables are known, not how predictors co-occur. Needs two outcomes measured on the same
    patients (the paper's case: 26 children, refractory and death)."""
    outcome_ids = tuple(knowledge.outcomes)
    if len(outcome_ids) != 2:
        raise ValueError("rebuilding a cohort needs exactly two outcomes")
    first, second = (knowledge.outcomes[o] for o in outcome_ids)
    if first.n != second.n:
        raise ValueError("both outcomes must be counted on the same patients")
    total = first.n
    columns, _ = cohort_columns(knowledge)
    tables = {
        column: (
            next((r for r in first.rows if r.row == column), None),
            next((r for r in second.rows if r.row == column), None),
        )
        for column in columns
    }
    for both in range(min(first.events, second.events) + 1):
        cells = {  # patients per (first outcome, second outcome)
            (1, 1): both,
            (1, 0): first.events - both,
            (0, 1): second.events - both,
            (0, 0): total - first.events - second.events + both,
        }
        if min(cells.values()) < 0:
            continue
        plans = {column: _plan(cells, *pair) for column, pair in tables.items()}
        if all(plan is not None for plan in plans.values()):
            return _patients(cells, plans, outcome_ids)
    raise ValueError("no per-patient cohort is consistent with these tables")


Cell = tuple[int, int]
Plan = dict[Cell, tuple[int, int]]  # cell -> (exposed patients, unexposed patients)


def _plan(cells: Mapping[Cell, int], a: Row | None, b: Row | None) -> Plan | None:
    """How many patients of each outcome cell are exposed / unexposed so that both tables hold."""
    shape = a if a is not None else b
    if shape is None:
        return None
    n_exposed, n_reference = shape.exposed.n, shape.reference.n
    if a is not None and b is not None and (a.exposed.n, a.reference.n) != (b.exposed.n, b.reference.n):
        return None
    ranges = range(max(cells.values()) + 1)
    for x11, u11 in itertools.product(ranges, ranges):
        for x01, u01 in _splits(x11, u11, b, n_exposed, n_reference):
            for x10, u10 in _splits(x11, u11, a, n_exposed, n_reference):
                x00 = n_exposed - x11 - x10 - x01
                u00 = n_reference - u11 - u10 - u01
                plan = {(1, 1): (x11, u11), (1, 0): (x10, u10), (0, 1): (x01, u01), (0, 0): (x00, u00)}
                if all(x >= 0 and u >= 0 and x + u <= cells[c] for c, (x, u) in plan.items()):
                    return plan
    return None


def _splits(x11: int, u11: int, row: Row | None, n_exposed: int, n_reference: int) -> Iterable[tuple[int, int]]:
    """Exposed/unexposed counts of the cell where only one outcome happened, given the row's events."""
    if row is None:
        return itertools.product(range(n_exposed + 1), range(n_reference + 1))
    return [(row.exposed.events - x11, row.reference.events - u11)]


def _patients(cells: Mapping[Cell, int], plans: Mapping[str, Plan | None], outcome_ids: Sequence[str]) -> Cohort:
    patients: list[dict[str, bool | None]] = []
    for cell, count in cells.items():
        for index in range(count):
            patient: dict[str, bool | None] = {outcome_ids[0]: bool(cell[0]), outcome_ids[1]: bool(cell[1])}
            for column, plan in plans.items():
                assert plan is not None
                exposed, unexposed = plan[cell]
                patient[column] = True if index < exposed else False if index < exposed + unexposed else None
            patients.append(patient)
    return Cohort((*plans, *outcome_ids), tuple(patients))


def cohort_csv(cohort: Cohort) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["patient", *cohort.columns])
    for number, patient in enumerate(cohort.patients, start=1):
        writer.writerow(
            [number, *("" if patient.get(c) is None else ("true" if patient[c] else "false") for c in cohort.columns)]
        )
    return out.getvalue()
