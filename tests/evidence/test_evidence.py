"""`nxp2-cds evidence`: verify the knowledge base, rebuild the paper's cohort, fit a site's cohort."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from cds_service.core.engine import Engine
from cds_service.core.knowledge import KnowledgeBase, load_knowledge
from cds_service.evidence.statistics import (
    CohortError,
    cohort_csv,
    cohort_from_counts,
    fit,
    read_cohort,
    two_by_two,
    verify,
)
from cds_service.resources import config_path
from tests.cli_runner import Cli

TODAY = date(2026, 11, 24)


def test_shipped_knowledge_reproduces_115_of_115(knowledge: KnowledgeBase) -> None:
    """Every published beta, OR, CI limit and P (23 rows x 5) is recomputed from the counts."""
    result = verify(knowledge)
    assert (result.reproduced, result.total, result.two_sided, result.ok) == (115, 115, (8, 8), True)


def test_verify_command_prints_the_tally(tmp_path: Path, cli: Cli) -> None:
    """`nxp2-cds evidence verify` prints the table and ends with 'reproduced: 115/115', exit 0."""
    result = cli("evidence", "verify")
    assert result.exit_code == 0
    assert result.stdout.rstrip().splitlines()[-1] == "reproduced: 115/115"


def _tampered(tmp_path: Path, old: str, new: str) -> Path:
    text = config_path("knowledge.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "tampered.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_tampered_count_fails_verification(tmp_path: Path, cli: Cli) -> None:
    """Changing one count (edema, refractory: 2/17 -> 3/17) makes verify report fewer than 115 and exit 1."""
    path = _tampered(
        tmp_path,
        'reference = { label = "no edema", events = 2, n = 17 }',
        'reference = { label = "no edema", events = 3, n = 17 }',
    )
    result = cli("evidence", "verify", "--knowledge", str(path))
    assert result.exit_code == 1
    tally = result.stdout.rstrip().splitlines()[-1]
    assert tally.startswith("reproduced: ")
    assert tally != "reproduced: 115/115"
    assert "MISMATCH" in result.stdout


def test_tampered_published_value_fails_verification(tmp_path: Path) -> None:
    """Changing one published number (an OR) is caught as exactly one mismatch."""
    path = _tampered(tmp_path, 'odds_ratio = "50.705"', 'odds_ratio = "5.705"')
    result = verify(load_knowledge(path))
    assert (result.reproduced, result.ok) == (114, False)


def test_the_bmi_death_ratio_defect_is_reported(knowledge: KnowledgeBase) -> None:
    """The printed 50% death ratio for BMI < 15 does not match its counts, and verify says it is a known defect."""
    mismatched = [(c.outcome_id, c.row.row) for c in verify(knowledge).rows if not c.ratios_ok]
    assert mismatched == [("gi_perforation_death", "bmi_lt_15")]


def test_rebuilt_cohort_has_every_table(knowledge: KnowledgeBase) -> None:
    """The per-patient cohort rebuilt from the counts has exactly the knowledge base's 2x2 tables."""
    cohort = cohort_from_counts(knowledge)
    assert len(cohort.patients) == 26
    for outcome_id, outcome in knowledge.outcomes.items():
        for row in outcome.rows:
            expected = (row.reference.events, row.reference.n, row.exposed.events, row.exposed.n)
            assert two_by_two(cohort, row.row, outcome_id) == expected, (outcome_id, row.row)


def test_round_trip_reproduces_the_shipped_knowledge(knowledge: KnowledgeBase) -> None:
    """counts -> CSV -> fit gives back every row's counts, published estimates and two-sided P."""
    fitted = fit(
        read_cohort(cohort_csv(cohort_from_counts(knowledge)), knowledge),
        knowledge,
        label="paper",
        description="rebuilt",
        today=TODAY,
    )
    for outcome_id, outcome in knowledge.outcomes.items():
        shipped = [(r.row, r.reference, r.exposed, r.published, r.p_two_sided) for r in outcome.rows]
        refit = [(r.row, r.reference, r.exposed, r.published, r.p_two_sided) for r in fitted.outcomes[outcome_id].rows]
        assert refit == shipped


def test_round_trip_through_the_commands(tmp_path: Path, cli: Cli) -> None:
    """`evidence cohort` -> `evidence fit` -> `evidence verify` on the fitted file: reproduced: 115/115."""
    csv_path, kb_path = tmp_path / "paper.csv", tmp_path / "fitted.toml"
    assert cli("evidence", "cohort", "-o", str(csv_path)).exit_code == 0
    assert cli("evidence", "fit", str(csv_path), "-o", str(kb_path)).exit_code == 0
    verified = cli("evidence", "verify", "--knowledge", str(kb_path))
    assert verified.stdout.rstrip().splitlines()[-1] == "reproduced: 115/115"


def test_fitted_knowledge_runs_the_service(tmp_path: Path, knowledge: KnowledgeBase, cli: Cli) -> None:
    """A fitted knowledge base file loads into the engine and says where its evidence comes from."""
    csv_path, kb_path = tmp_path / "site.csv", tmp_path / "site.toml"
    csv_path.write_text(cohort_csv(cohort_from_counts(knowledge)))
    cli("evidence", "fit", str(csv_path), "-o", str(kb_path), "--label", "Children's Hospital X cohort (n = 26)")
    engine = Engine.load(kb_path)
    assert engine.knowledge.source.label == "Children's Hospital X cohort (n = 26)"
    assert "this site's own cohort of 26 patients" in engine.knowledge.source.caveat


def test_fit_drops_the_papers_own_defects(knowledge: KnowledgeBase) -> None:
    """A site fit keeps the one-sided flag on zero-cell rows but not the paper's misprints or notes."""
    fitted = fit(
        read_cohort(cohort_csv(cohort_from_counts(knowledge)), knowledge),
        knowledge,
        label="site",
        description="site",
        today=TODAY,
    )
    defects = {d for o in fitted.outcomes.values() for r in o.rows for d in r.defects}
    notes = [r.note for o in fitted.outcomes.values() for r in o.rows if r.note]
    assert (defects, notes) == ({"one-sided-zero-cell"}, [])


HEADER = (
    "female,bmi_lt_15,muscle_strength_le_3,edema,skin_ulcer,bulbar_weakness,ana_positive,cd4_cd8_lt_1_4,"
    "ferritin_gt_200,refractory,gi_perforation_death"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: the header is missing"),
        (HEADER.replace(",gi_perforation_death", ""), "line 1: required columns missing: gi_perforation_death"),
        (HEADER.replace("edema,", ""), "line 1: required columns missing: edema"),
        (HEADER + ",edema", "line 1: columns named twice: edema"),
        (HEADER, "no patients"),
        (
            HEADER + "\ntrue,false,true,maybe,false,false,true,false,true,true,false",
            "line 2, column 'edema': 'maybe' is not true, false or blank",
        ),
        (HEADER + "\ntrue,false,true\n", "line 2: 3 cells, the header has 11"),
        (HEADER + '\n"unterminated,false', "line"),
    ],
    ids=["empty", "no-outcome", "no-driver", "duplicate", "header-only", "bad-value", "short-line", "bad-quote"],
)
def test_bad_cohort_files_name_the_line_and_column(knowledge: KnowledgeBase, text: str, message: str) -> None:
    """A cohort file that cannot be used is refused with the line (and column) named."""
    with pytest.raises(CohortError, match=message):
        read_cohort(text, knowledge, name="site.csv")


def test_driver_nobody_has_cannot_be_fitted(knowledge: KnowledgeBase) -> None:
    """A tier-driving column in which no patient is exposed cannot be estimated: the fit is refused, naming it."""
    lines = [HEADER] + [
        "false,false,false,false,false,false,false,false,false,true,false",
        "false,false,false,false,false,false,false,false,false,false,true",
    ] * 5
    with pytest.raises(CohortError, match="column 'muscle_strength_le_3' for refractory: cannot estimate"):
        fit(read_cohort("\n".join(lines), knowledge), knowledge, label="x", description="x", today=TODAY)


def test_fit_command_reports_bad_files_in_one_line(tmp_path: Path, cli: Cli) -> None:
    """`evidence fit` on a bad file exits 2 with one line naming the problem."""
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\ntrue,false,true,perhaps,false,false,true,false,true,true,false\n")
    result = cli("evidence", "fit", str(bad), "-o", str(tmp_path / "out.toml"))
    assert result.exit_code == 2
    assert "line 2, column 'edema'" in result.stderr
    assert not (tmp_path / "out.toml").exists()


def test_blank_means_not_recorded(knowledge: KnowledgeBase) -> None:
    """A blank predictor cell leaves that patient out of that predictor's table only."""
    cohort = read_cohort(
        HEADER + "\n,true,true,true,true,true,true,true,true,true,false\n"
        "true,false,false,false,false,false,false,false,false,false,true",
        knowledge,
    )
    assert (two_by_two(cohort, "female", "refractory"), two_by_two(cohort, "edema", "refractory")) == (
        (0, 0, 0, 1),
        (0, 1, 1, 1),
    )
