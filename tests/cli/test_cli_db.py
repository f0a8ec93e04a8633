"""``nxp2-cds migrate`` and ``nxp2-cds feedback report`` on the database named by the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_service.protocol import FeedbackItem
from cds_service.settings import CONFIG_ENV
from cds_service.store.records import IssuedCard, OfferedSuggestion
from cds_service.store.store import Store
from tests.builders import AT
from tests.cli_runner import Cli

SERVICE = "nxp2-jdm-risk"
FERRITIN_ORDER = OfferedSuggestion("x", "ferritin_gt_200")
ANA_ORDER = OfferedSuggestion("y", "ana_positive")


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """NXP2_CDS_DATABASE_URL names a temporary SQLite file; no configuration file is read."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("NXP2_CDS_DATABASE_URL", url)
    return url


@pytest.fixture
def populated(database: str, cli: Cli) -> str:
    """A migrated database: two refractory warning cards (one accepted with its ferritin order 'x', one overridden
    'not-relevant'), one screening card without feedback, and feedback on a card it never issued."""
    assert cli("migrate").exit_code == 0
    store = Store(database)
    store.record_cards(
        [
            IssuedCard("r-1", SERVICE, "refractory", "warning", ("edema",), "kb@1", AT, (FERRITIN_ORDER,)),
            IssuedCard("r-2", SERVICE, "refractory", "warning", ("edema",), "kb@1", AT, (ANA_ORDER,)),
            IssuedCard("s-1", SERVICE, None, "info", (), "kb@1", AT),
        ]
    )
    items = [
        {"card": "r-1", "outcome": "accepted", "acceptedSuggestions": [{"id": "x"}], "outcomeTimestamp": AT},
        {
            "card": "r-2",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"system": "urn:reasons", "code": "not-relevant", "display": "Not relevant"},
                "userComment": "private remark",
            },
            "outcomeTimestamp": AT,
        },
        {"card": "ghost", "outcome": "overridden", "outcomeTimestamp": AT},
    ]
    store.record_feedback(SERVICE, [FeedbackItem.model_validate(i) for i in items], AT)
    store.dispose()
    return database


def test_migrate_creates_the_schema(database: str, cli: Cli) -> None:
    """'nxp2-cds migrate' brings the configured database to the newest revision and says so."""
    result = cli("migrate")
    store = Store(database)
    try:
        assert result.exit_code == 0, result.output
        assert f"revision {Store.head_revision()}" in result.stdout
        assert store.schema_is_current()
    finally:
        store.dispose()


def test_migrate_twice_succeeds(database: str, cli: Cli) -> None:
    """Running 'nxp2-cds migrate' on an up-to-date database succeeds again."""
    assert [cli("migrate").exit_code, cli("migrate").exit_code] == [0, 0]


def test_report_prints_a_table(populated: str, cli: Cli) -> None:
    """'feedback report' prints one line per outcome and tier: issued, with feedback, no feedback, accepted,
    overridden, accepted then overridden, overridden then accepted, the rates and the override reasons."""
    result = cli("feedback", "report")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    (refractory,) = [line for line in lines if " refractory " in line]
    assert refractory.split()[3:13] == ["2", "2", "0", "1", "1", "0", "0", "50.0%", "50.0%", "Not"]
    assert "screening" in result.stdout


def test_report_counts_a_card_accepted_then_overridden_in_both(populated: str, cli: Cli) -> None:
    """After r-1 (accepted) is overridden later, the text report counts it accepted, overridden and accepted then
    overridden: accepted 1, overridden 2 of 2 cards."""
    store = Store(populated)
    item = {"card": "r-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-24T13:00:00Z"}
    store.record_feedback(SERVICE, [FeedbackItem.model_validate(item)], AT)
    store.dispose()
    (refractory,) = [line for line in cli("feedback", "report").stdout.splitlines() if " refractory " in line]
    assert refractory.split()[3:12] == ["2", "2", "0", "1", "2", "1", "0", "50.0%", "100.0%"]


def test_report_prints_the_suggestion_table(populated: str, cli: Cli) -> None:
    """The text report has a table of suggested orders per predictor: offered, accepted, acceptance."""
    lines = cli("feedback", "report").stdout.splitlines()
    rows = {line.split()[1]: line.split()[2:] for line in lines if line.startswith(SERVICE) and "_" in line.split()[1]}
    assert rows == {"ana_positive": ["1", "0", "0.0%"], "ferritin_gt_200": ["1", "1", "100.0%"]}


def test_report_shows_unlinked_feedback(populated: str, cli: Cli) -> None:
    """The text report has a section for feedback on cards this database never issued."""
    result = cli("feedback", "report")
    section = result.stdout.split("never issued (unlinked):")[1].splitlines()
    assert section[3].split()[:5] == [SERVICE, "1", "1", "0", "1"]


def test_report_never_prints_comments(populated: str, cli: Cli) -> None:
    """Override comments may name the patient: the report leaves them out."""
    assert "private remark" not in cli("feedback", "report").stdout
    assert "private remark" not in cli("feedback", "report", "--json").stdout


def test_report_json(populated: str, cli: Cli) -> None:
    """'feedback report --json' prints the same report as JSON."""
    result = cli("feedback", "report", "--json")
    document = json.loads(result.stdout)
    rows = {(r["outcome"], r["tier"]): (r["cards_issued"], r["accepted"], r["override_rate"]) for r in document["rows"]}
    assert rows == {("refractory", "warning"): (2, 1, 0.5), (None, "info"): (1, 0, 0.0)}
    assert [(s["predictor"], s["offered"], s["accepted"]) for s in document["suggestions"]] == [
        ("ana_positive", 1, 0),
        ("ferritin_gt_200", 1, 1),
    ]
    assert [u["feedback_entries"] for u in document["unlinked"]] == [1]


def test_report_for_another_service_is_empty(populated: str, cli: Cli) -> None:
    """'--service ID' limits the report to that service."""
    document = json.loads(cli("feedback", "report", "--json", "--service", "other").stdout)
    assert (document["service_id"], document["rows"], document["unlinked"]) == ("other", [], [])


def test_report_on_an_unmigrated_database_asks_for_migrate(database: str, cli: Cli) -> None:
    """Before 'migrate', the report exits 2 with one line that says to run it."""
    result = cli("feedback", "report")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["nxp2-cds: the database schema is not up to date: run 'nxp2-cds migrate'"]


@pytest.mark.parametrize("command", [["migrate"], ["feedback", "report"]])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nosuchdb://user:s3cret@host/db", "nosuchdb"),
        ("not a database url", "not a valid database URL"),
        ("postgresql://postgres:s3cret@127.0.0.1:1/none", "database error"),
    ],
)
def test_bad_database_url_exits_2_with_one_line(
    command: list[str], url: str, says: str, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    """An unusable or unreachable database: exit code 2, one line on stderr, no traceback, no password."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("NXP2_CDS_DATABASE_URL", url)
    result = cli(*command)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert says in line
    assert "s3cret" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_invalid_settings_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch, cli: Cli) -> None:
    """Invalid settings (here the log level) are reported on one line with exit code 2."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("NXP2_CDS_LOG_LEVEL", "LOUD")
    result = cli("migrate")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert "log_level" in line
