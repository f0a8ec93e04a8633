"""``nxp2-cds migrate`` and ``nxp2-cds feedback report``: the feedback database from the command line.

Both read ``database_url`` from the settings. Any error is one line on standard error and exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import click
import orjson
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from cds_service.cli.common import fail
from cds_service.settings import SettingsError, load_settings
from cds_service.store.database import StoreError
from cds_service.store.records import ReasonCount, Report
from cds_service.store.store import Store


def _database_error(exc: SQLAlchemyError) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        detail = str(exc.orig).strip().splitlines()
        return f"database error: {detail[0] if detail else type(exc.orig).__name__}"
    return f"database error: {type(exc).__name__}"


@contextmanager
def _store() -> Iterator[Store]:
    """The store on the configured database; settings, URL and database errors end the command (exit 2)."""
    try:
        database_url = load_settings().database_url
    except SettingsError as exc:
        fail(str(exc).replace("\n", " "))
    try:
        store = Store(database_url)
    except StoreError as exc:
        fail(str(exc))
    try:
        yield store
    except SQLAlchemyError as exc:
        fail(_database_error(exc))
    finally:
        store.dispose()


@click.command()
def migrate() -> None:
    """Create or upgrade the database schema (feedback, issued cards) to the newest revision."""
    with _store() as store:
        store.migrate()
        click.echo(f"{store.safe_url}: schema at revision {store.current_revision()} (newest)")


@click.group()
def feedback() -> None:
    """Clinicians' feedback on the cards."""


@feedback.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--service", "service_id", metavar="ID", help="Only this CDS service (default: all).")
def report(as_json: bool, service_id: str | None) -> None:
    """Acceptance and override per outcome and tier (each card once, over all its feedback), acceptance per
    suggested order, and feedback on cards this database never issued."""
    with _store() as store:
        if store.current_revision() != store.head_revision():
            fail("the database schema is not up to date: run 'nxp2-cds migrate'")
        result = store.report(service_id)
    if as_json:
        click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_report(result), nl=False)


# --- text rendering ----------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _reasons(reasons: Sequence[ReasonCount]) -> str:
    if not reasons:
        return "–"
    return "; ".join(f"{r.display or r.code or '(no reason given)'} ({r.count})" for r in reasons)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Callable[[int], bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if numeric(i) else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_report(report: Report) -> str:
    """The report as plain-text tables for a terminal."""
    scope = f"service {report.service_id}" if report.service_id else "all services"
    out = [
        f"Feedback report ({scope}), {report.generated_at:%Y-%m-%d %H:%M} UTC",
        "A card counts once in each column, over all its feedback: accepted if any feedback accepted it, overridden",
        "if any overrode it; it can be both (acc→ovr: accepted, later overridden; ovr→acc: overridden, later accepted;",
        "by outcomeTimestamp). Rates are of the cards issued. Override reasons: each overridden card's latest reason.",
        "",
    ]
    if report.rows:
        headers: tuple[str, ...] = (
            "service",
            "outcome",
            "tier",
            "issued",
            "with feedback",
            "no feedback",
            "accepted",
            "overridden",
            "acc→ovr",
            "ovr→acc",
            "acceptance",
            "override",
            "top override reasons",
        )
        cells: list[tuple[str, ...]] = [
            (
                r.service_id,
                r.outcome or "screening",
                r.tier,
                str(r.cards_issued),
                str(r.cards_with_feedback),
                str(r.no_feedback),
                str(r.accepted),
                str(r.overridden),
                str(r.accepted_then_overridden),
                str(r.overridden_then_accepted),
                _percent(r.acceptance_rate),
                _percent(r.override_rate),
                _reasons(r.top_override_reasons),
            )
            for r in report.rows
        ]
        out += _table(headers, cells, lambda i: 3 <= i <= 11)
    else:
        out.append("No cards issued.")
    out.append("")
    out += _render_suggestions(report)
    out.append("")
    if report.unlinked:
        out.append("Feedback on cards this database never issued (unlinked):")
        headers = ("service", "entries", "cards", "accepted", "overridden", "top override reasons")
        cells = [
            (
                u.service_id,
                str(u.feedback_entries),
                str(u.cards),
                str(u.accepted),
                str(u.overridden),
                _reasons(u.top_override_reasons),
            )
            for u in report.unlinked
        ]
        out += _table(headers, cells, lambda i: 1 <= i <= 4)
        out.append("(Unlinked: a card counts once, by its latest feedback.)")
    else:
        out.append("Feedback on cards this database never issued (unlinked): none.")
    return "\n".join(out) + "\n"


def _render_suggestions(report: Report) -> list[str]:
    if not report.suggestions:
        out = ["Suggested orders: none recorded."]
    else:
        out = ["Suggested orders, per predictor (accepted: named by any accepted feedback on its card, at any time):"]
        cells = [
            (s.service_id, s.predictor or "(unknown)", str(s.offered), str(s.accepted), _percent(s.acceptance_rate))
            for s in report.suggestions
        ]
        out += _table(("service", "predictor", "offered", "accepted", "acceptance"), cells, lambda i: i >= 2)
    for u in report.unmatched_suggestions:
        out.append(f"{u.service_id}: {u.accepted} accepted suggestion(s) on {u.cards} card(s) match no recorded order")
    if report.unmatched_suggestions:
        out.append("(cards recorded before their suggestions were kept, or ids the card did not offer).")
    return out
