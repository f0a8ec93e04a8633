"""The benchmark harness itself (not speed): its workload is realistic FHIR, its statistics and target checks are
right. Timings are never asserted in tests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.bundle import Bundle

from bench import workload
from bench.__main__ import targets
from bench.stats import percentile
from cds_service.engine import Engine


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
    assert findings.skipped["unrelated"] > 700


@pytest.mark.parametrize(("eligible", "cards"), [(True, 2), (False, 0)])
def test_eligible_chart_gives_cards_the_other_none(engine: Engine, eligible: bool, cards: int) -> None:
    """The eligible chart yields both risk cards; the ineligible one (no JDM, no anti-NXP2) none."""
    from cds_service.cards import CardContext

    assessment = engine.assess(workload.chart(300, eligible=eligible), patient_id=workload.PID, at=datetime.now(UTC))
    assert len(engine.cards(assessment, CardContext(hook_instance="h", patient_id=workload.PID))) == cards


def test_percentile_interpolates() -> None:
    """Percentiles interpolate between closest ranks."""
    assert (percentile([1, 2, 3, 4], 50), percentile([5.0], 99), percentile(list(range(101)), 99)) == (2.5, 5.0, 99.0)


def test_targets_report_misses() -> None:
    """The target check marks a measured ratio above its limit as missed, and one within as met."""
    checks = targets({"http": {"hook_vs_hello_throughput": 0.2, "at_100_rps": {"p99_ms": 12.0}}})
    assert [(c["target"].split(":")[0], c["met"]) for c in checks] == [("HTTP", False), ("HTTP", True)]
