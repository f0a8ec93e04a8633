"""The benchmark harness itself (not speed): its workload is realistic FHIR, its statistics and target checks are
right. Timings are never asserted in tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from bench import workload
from bench.__main__ import CQL_HINT, goals, markdown
from bench.stats import percentile
from cds_service.core.engine import Engine
from fhir_mappings import SkipReason


@pytest.mark.parametrize("size", [10, 100, 1000])
def test_workload_has_the_requested_size(size: int) -> None:
    """A chart of n resources has exactly n resources, one of them the Patient."""
    chart = workload.chart(size)
    assert (len(chart), sum(r["resourceType"] == "Patient" for r in chart)) == (size, 1)


def test_workload_is_valid_fhir_r4() -> None:
    """Every Bundle of the benchmark request validates as FHIR R4."""
    request = workload.request(200)
    for key in ("observations", "conditions"):
        Bundle.model_validate(request["prefetch"][key])


def test_workload_is_mostly_unrelated_data(engine: Engine) -> None:
    """Most resources of the realistic mix are unrelated to any predictor (vitals, common labs)."""
    findings = engine.reader.read(workload.chart(1000), patient_id=workload.PID, at=workload.AT).findings()
    assert findings.skipped[SkipReason.UNRELATED] > 700


@pytest.mark.parametrize(("eligible", "cards"), [(True, 2), (False, 0)])
def test_eligible_chart_gives_cards_the_other_none(engine: Engine, eligible: bool, cards: int) -> None:
    """The eligible chart yields both risk cards; the ineligible one (no JDM, no anti-NXP2) none."""
    from cds_service.core.cards import CardContext

    assessment = engine.assess(workload.chart(300, eligible=eligible), patient_id=workload.PID, at=datetime.now(UTC))
    assert len(engine.cards(assessment, CardContext(hook_instance="h", patient_id=workload.PID))) == cards


def test_percentile_interpolates() -> None:
    """Percentiles interpolate between closest ranks."""
    assert (percentile([1, 2, 3, 4], 50), percentile([5.0], 99), percentile(list(range(101)), 99)) == (2.5, 5.0, 99.0)


def test_goals_report_misses() -> None:
    """Met is computed from the measured value and the limit: a ratio above its maximum or below its minimum is
    missed, one within is met."""
    rows = goals({"http": {"hook_vs_parse_throughput": 0.2, "at_100_rps": {"p99_ms": 12.0}}})
    measured = {c["target"].split(":")[0]: c["met"] for c in rows if c["value"] is not None}
    assert measured == {"HTTP throughput": False, "HTTP": True}


def test_goals_without_cql_say_how_to_measure_them() -> None:
    """Without --cql the two CQL goals are listed, not measured, and say how to measure them; nothing else is
    missing when every other scenario ran."""
    rows = goals({})
    cql = [c for c in rows if "CQL engine" in c["target"]]
    assert [(c["value"], c["met"], c["note"]) for c in cql] == [(None, None, CQL_HINT)] * 2
    assert "| HTTP p50, 100 Observations: CQL engine ÷ service | " + CQL_HINT + " | ≥ 40 | — |" in markdown(
        {"when": "now", "machine": "m", "goals": rows}
    )


def test_cql_goals_use_the_default_peer_mode() -> None:
    """The CQL goals take the peer's default mode (per-request) and are checked against 40x and 80x."""

    def entry(ratio: float) -> dict[str, object]:
        side = {"n": 3, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "server_cql_p50_ms": 1.0}
        return {"body_bytes": 2048, "peer": side, "service": side, "peer_vs_service_p50": ratio}

    cql = {
        "goal_mode": "per-request",
        "method": "m",
        "versions": {"node": "v20", "installed": {"cql-execution": "3.3.2"}, "declared": {}},
        "modes": {
            "per-request": {"10": entry(30.0), "100": entry(45.0), "1000": entry(70.0)},
            "shared": {"10": entry(1.0), "100": entry(1.0), "1000": entry(1.0)},
        },
    }
    rows = goals({"cql": cql})
    assert [(c["value"], c["met"]) for c in rows if "CQL engine" in c["target"]] == [(45.0, True), (70.0, False)]
    text = markdown({"when": "now", "machine": "m", "goals": rows, "cql": cql})
    assert "cql-execution 3.3.2" in text
    assert "| per-request | 1,000 | 2 |" in text


@pytest.mark.parametrize("size", [10, 100, 1000])
def test_observations_request_holds_exactly_n_observations(size: int) -> None:
    """The CQL comparison counts Observations: its request holds exactly that many, with the Patient and 5
    Conditions."""
    prefetch = workload.observations_request(size)["prefetch"]
    counts = [len(prefetch[key]["entry"]) for key in ("observations", "conditions")]
    assert (counts, prefetch["patient"]["resourceType"]) == ([size, 5], "Patient")


def test_parse_route_reads_and_parses_only() -> None:
    """The bench's baseline route answers a valid body with 200 and a broken one with an error, on the service's own
    app (it exists only in bench.apps)."""
    import orjson

    from bench.apps import PARSE_ROUTE, add_parse_route, service_app

    client = add_parse_route(service_app(log_level="WARNING")).test_client()
    good = client.post(PARSE_ROUTE, data=orjson.dumps(workload.request(10)), content_type="application/json")
    bad = client.post(PARSE_ROUTE, data=b"{", content_type="application/json")
    assert (good.status_code, good.get_json(), bad.status_code) == (200, {"cards": []}, 500)


def test_cql_folder_must_be_a_copy_of_the_peer(tmp_path: Path) -> None:
    """--cql refuses a folder that is not the CQL peer, before anything runs."""
    from bench.cql_peer import PeerError, check_folder

    with pytest.raises(PeerError, match="not a copy of the CQL peer"):
        check_folder(tmp_path)
