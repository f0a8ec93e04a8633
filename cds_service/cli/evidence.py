"""``nxp2-cds evidence``: verify the knowledge base, rebuild the paper's cohort, fit a site's own cohort."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import tomli_w

from cds_service.cli.common import fail
from cds_service.core.knowledge import KnowledgeBase, KnowledgeError, load_knowledge
from cds_service.evidence.statistics import (
    CohortError,
    cohort_csv,
    cohort_from_counts,
    fit,
    read_cohort,
    render_verification,
    verify,
)
from cds_service.settings import SettingsError, load_settings

KNOWLEDGE_OPTION = click.option(
    "--knowledge",
    "knowledge_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Knowledge base file (default: the configured one, else the shipped config/knowledge.toml).",
)


def _knowledge(path: Path | None) -> KnowledgeBase:
    try:
        return load_knowledge(path or load_settings().knowledge_file)
    except (KnowledgeError, SettingsError) as exc:
        fail(str(exc))


@click.group()
def evidence() -> None:
    """Audit and refit the evidence behind the cards."""


@evidence.command("verify")
@KNOWLEDGE_OPTION
def verify_command(knowledge_file: Path | None) -> None:
    """Recompute beta, OR, 95% CI and P of every row from its 2x2 counts (exact conditional logistic regression)
    and compare each with the published value at its printed precision. Exits 1 unless all reproduce."""
    knowledge = _knowledge(knowledge_file)
    result = verify(knowledge)
    click.echo(render_verification(result, knowledge))
    if not result.ok:
        sys.exit(1)


@evidence.command("cohort")
@KNOWLEDGE_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default="-",
    help="Where to write the CSV (default: standard output).",
)
def cohort_command(knowledge_file: Path | None, output: Path) -> None:
    """Write a per-patient cohort CSV whose 2x2 tables equal the knowledge base's (synthetic patients): the format
    `evidence fit` reads, and the paper's cohort rebuilt from its counts."""
    knowledge = _knowledge(knowledge_file)
    try:
        text = cohort_csv(cohort_from_counts(knowledge))
    except ValueError as exc:
        fail(str(exc))
    if str(output) == "-":
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@evidence.command("fit")
@click.argument("cohort_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The knowledge base file to write.",
)
@KNOWLEDGE_OPTION
@click.option("--label", default=None, help="What cards call this evidence (default: 'Site cohort (n = N)').")
@click.option("--description", default=None, help="One sentence on the cohort (centre, years, inclusion).")
def fit_command(
    cohort_file: Path, output: Path, knowledge_file: Path | None, label: str | None, description: str | None
) -> None:
    """Fit the knowledge base on a site's own cohort: COHORT_FILE has one line per patient, a column per predictor
    row (true/false/blank) and per outcome. Writes a knowledge base the service can run on
    (knowledge_file = OUTPUT)."""
    base = _knowledge(knowledge_file)
    try:
        text = sys.stdin.read() if str(cohort_file) == "-" else cohort_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{cohort_file}: cannot be read: {exc}")
    try:
        cohort = read_cohort(text, base, name=str(cohort_file))
        n = len(cohort.patients)
        fitted = fit(
            cohort,
            base,
            label=label or f"Site cohort (n = {n})",
            description=description or f"{n} patients from {cohort_file.name}, fitted with nxp2-cds evidence fit.",
            today=datetime.now(UTC).date(),
        )
    except (CohortError, KnowledgeError) as exc:
        fail(str(exc))
    document = fitted.model_dump(mode="json", exclude_none=True)
    header = (
        f"# nxp2-cds knowledge base fitted on {cohort_file.name} ({n} patients) with `nxp2-cds evidence fit`.\n"
        "# Same method as the shipped knowledge base: exact conditional logistic regression per 2x2 table.\n\n"
    )
    output.write_text(header + tomli_w.dumps(document), encoding="utf-8")
    result = verify(fitted)
    click.echo(f"wrote {output}: {len(result.rows)} rows, reproduced: {result.reproduced}/{result.total}", err=True)
