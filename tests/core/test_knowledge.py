"""The knowledge base loads, says what the paper says, and refuses a bad file naming the field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cds_service.contracts import OUTCOME_IDS, PREDICTOR_IDS
from cds_service.core.engine import Engine
from cds_service.core.knowledge import KnowledgeBase, KnowledgeError, load_knowledge
from cds_service.evidence.exact_logistic import exact_conditional_estimate, matches_published
from cds_service.resources import config_path


def test_shipped_knowledge_has_the_contract_ids(knowledge: KnowledgeBase) -> None:
    """The shipped knowledge base defines every public predictor and outcome id."""
    assert (set(PREDICTOR_IDS) <= set(knowledge.predictors), set(knowledge.outcomes)) == (True, set(OUTCOME_IDS))


def test_drivers_are_the_papers_conclusions(knowledge: KnowledgeBase) -> None:
    """Refractory: muscle, edema, ulcer, dysphagia, CD4/CD8, ferritin; GI/death: BMI, edema, ulcer, dysphagia, ANA."""
    assert knowledge.outcomes["refractory"].drivers == (
        "muscle_strength_le_3",
        "edema",
        "skin_ulcer",
        "bulbar_weakness",
        "cd4_cd8_lt_1_4",
        "ferritin_gt_200",
    )
    assert knowledge.outcomes["gi_perforation_death"].drivers == (
        "bmi_lt_15",
        "edema",
        "skin_ulcer",
        "bulbar_weakness",
        "ana_positive",
    )


def test_rows_reproduce_their_published_odds_ratios(knowledge: KnowledgeBase) -> None:
    """Each row's 2x2 counts reproduce its published OR and P at the printed precision."""
    mismatches = []
    for oid, outcome in knowledge.outcomes.items():
        for row in outcome.rows:
            est = exact_conditional_estimate(row.reference.events, row.reference.n, row.exposed.events, row.exposed.n)
            if not (
                matches_published(est.odds_ratio, row.published.odds_ratio)
                and matches_published(est.p_value, row.published.p)
            ):
                mismatches.append(f"{oid}/{row.row}")
    assert mismatches == []


def test_zero_cell_rows_state_their_two_sided_p(knowledge: KnowledgeBase) -> None:
    """Every row with a zero cell carries the two-sided P beside the paper's one-sided one, and it is right."""
    for outcome in knowledge.outcomes.values():
        for row in outcome.rows:
            if row.zero_cell:
                assert row.p_two_sided is not None, row.row
                est = exact_conditional_estimate(
                    row.reference.events, row.reference.n, row.exposed.events, row.exposed.n
                )
                assert matches_published(est.p_two_sided, row.p_two_sided), row.row


def test_dysphagia_death_is_flagged_as_one_sided(knowledge: KnowledgeBase) -> None:
    """The dysphagia row for death says its P is one-sided and 0.091 two-sided."""
    row = knowledge.outcomes["gi_perforation_death"].row_for("bulbar_weakness")
    assert row is not None
    assert ("one-sided-zero-cell" in row.defects, row.p_two_sided, "0.091" in (row.note or "")) == (
        True,
        "0.0913",
        True,
    )


def test_every_known_defect_of_the_paper_is_stated(knowledge: KnowledgeBase) -> None:
    """The six known defects (BMI ratio, swapped P, one-sided P, edema count, ferritin unit, not adjusted) exist."""
    assert set(knowledge.defects) == {
        "bmi-death-ratio",
        "swapped-p-text",
        "one-sided-zero-cell",
        "edema-count",
        "ferritin-unit",
        "adjusted-or",
    }


def _shipped() -> dict[str, Any]:
    return tomllib.loads(config_path("knowledge.toml").read_text(encoding="utf-8"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "knowledge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _mutated(tmp_path: Path, old: str, new: str) -> Path:
    text = config_path("knowledge.toml").read_text(encoding="utf-8")
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("events = 11\nn = 26", "events = 11\nn = -1", r"outcomes\.refractory\.n"),
        (
            'exposed = { label = "female", events = 8, n = 17 }',
            'exposed = { label = "female", events = 18, n = 17 }',
            r"outcomes\.refractory\.rows\.0\.exposed: .*exceed the group size",
        ),
        (
            'drivers = ["bmi_lt_15", "edema"',
            'drivers = ["bmi_lt_16", "edema"',
            r"drivers without a row: \['bmi_lt_16'\]",
        ),
        ("threshold = 200\n", 'threshold = "two hundred"\n', r"predictors\.ferritin_gt_200\.rule\.quantity\.threshold"),
        ('p = "0.8037"', 'p = "about 0.8"', r"rows\.0\.published\.p: .*not a printed number"),
        ('defects = ["ferritin-unit"]', 'defects = ["no-such-defect"]', r"unknown defects \['no-such-defect'\]"),
        ("max_age_years = 18", "max_age_years = 0", r"eligibility\.max_age_years"),
        ('kind = "ratio"', 'kind = "magic"', r"predictors\.cd4_cd8_lt_1_4\.rule"),
        (', now = "age {age} now (no onset recorded)" }', " }", r"wording\.basis_age: missing \['now'\]"),
        ('diagnosis = "age {age} at diagnosis', 'then = "age {age} at diagnosis', r"wording\.basis_age\.then"),
    ],
    ids=[
        "negative-n",
        "events-over-n",
        "unknown-driver",
        "threshold-type",
        "published-format",
        "unknown-defect",
        "max-age",
        "unknown-kind",
        "age-basis-unworded",
        "age-basis-unknown",
    ],
)
def test_bad_knowledge_names_the_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    """A knowledge base with a bad value stops loading with a message naming the field."""
    with pytest.raises(KnowledgeError, match=message):
        load_knowledge(_mutated(tmp_path, old, new))


def test_missing_contract_predictor_is_refused(tmp_path: Path) -> None:
    """Removing a contract predictor (ild) is refused."""
    text = config_path("knowledge.toml").read_text(encoding="utf-8")
    start = text.index("[predictors.ild]")
    end = text.index("[predictors.ana_positive]")
    with pytest.raises(KnowledgeError, match=re.escape("missing: ['ild']")):
        load_knowledge(_write(tmp_path, text[:start] + text[end:]))


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """A knowledge file that is not TOML is refused with its path."""
    path = _write(tmp_path, "schema_version = = 1")
    with pytest.raises(KnowledgeError, match="not valid TOML"):
        load_knowledge(path)


def test_unknown_value_set_in_a_rule_is_refused(tmp_path: Path) -> None:
    """A rule naming a value set that does not exist stops the engine from loading."""
    path = _mutated(tmp_path, 'valuesets = ["ferritin"]', 'valuesets = ["ferritn"]')
    with pytest.raises(KnowledgeError, match=r"predictors\.ferritin_gt_200\.rule: unknown value sets \['ferritn'\]"):
        Engine.load(path)


def test_missing_knowledge_file_is_refused(tmp_path: Path) -> None:
    """A knowledge file that does not exist is refused with its path."""
    with pytest.raises(KnowledgeError, match="cannot be read"):
        load_knowledge(tmp_path / "absent.toml")
