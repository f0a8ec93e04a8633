"""The built image serving: its default command as its non-root user with its volume, probed over HTTP, then
stopped with SIGTERM; the container's root filesystem is compared before and after.

The tests of one module share one running container and run in file order: the live checks first, then the
ones about the stop (which stops it).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service.kit.examples import as_of_now, card_tiers, prefetch_from_bundle
from tests.builders import assert_valid_cds
from tests.container.buildah import (
    USER_ID,
    VOLUME,
    Container,
    Entry,
    RunningCommand,
    Stopped,
    alive,
    changes,
    descendants,
    ids,
    image_command,
    image_size,
    inspect_image,
    run,
    snapshot,
    started,
    working_container,
)
from tests.container.conftest import IMAGE_SIZE
from tests.server_process import free_port

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "ex-fatal-course"
START_SECONDS = 90.0
STOP_SECONDS = 30.0  # gunicorn's graceful timeout is 20 s
SIZE_LIMIT = 800_000_000
"""The Debian stand-in base is ~242 MB; numpy and scipy (the exact statistics and rcpchgrowth's WHO growth tables)
are ~215 MB of the rest."""
# what `buildah run` itself changes in the root filesystem: /run, where it places /run/.containerenv for the run
BUILDAH_OWN = {"/run": "changed"}


@dataclass
class Service:
    container: Container
    volume: Path
    running: RunningCommand
    base_url: str
    env: dict[str, str]
    before: dict[str, Entry]
    stopped: Stopped | None = None


def wait_for_health(service: RunningCommand, url: str, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise AssertionError(f"the container exited with {service.process.returncode}: {service.log_tail()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s: {service.log_tail()}")


@pytest.fixture(scope="module")
def service(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The image's default command (ENTRYPOINT + CMD) running in a new container, as the image's user, with a host
    folder owned by uid 10001 as its volume, on a free loopback port."""
    folder = tmp_path_factory.mktemp("container")
    volume = folder / "volume"
    volume.mkdir(mode=0o700)
    os.chown(volume, USER_ID, USER_ID)
    port = free_port()
    env = {"NXP2_CDS_SERVER__HOST": "127.0.0.1", "NXP2_CDS_SERVER__PORT": str(port)}
    with working_container(image) as container:
        before = snapshot(container.root, skip=[VOLUME, "/tmp"])
        command = image_command(image)
        with started(container, command, env, {volume: VOLUME}, folder / "serve.log") as running:
            base_url = f"http://127.0.0.1:{port}"
            wait_for_health(running, f"{base_url}/healthz")
            yield Service(container, volume, running, base_url, env, before)


@pytest.fixture(scope="module")
def stopped(service: Service) -> Stopped:
    """The service stopped with SIGTERM, sent to its PID inside the container (once per module)."""
    if service.stopped is None:
        service.stopped = service.running.signal(signal.SIGTERM, STOP_SECONDS)
    return service.stopped


def patient_view(base_url: str) -> dict[str, Any]:
    """A patient-view call as an EHR makes it: the prefetch the discovery templates ask for, from an example
    patient's Bundle (dates moved to today)."""
    service = requests.get(f"{base_url}/cds-services", timeout=10).json()["services"][0]
    bundle = json.loads((ROOT / "examples" / "patients" / f"{EXAMPLE}.json").read_text(encoding="utf-8"))
    bundle = as_of_now(bundle, datetime.now(UTC).date())
    request = {
        "hook": "patient-view",
        "hookInstance": "c0ffee00-0000-4000-8000-000000000014",
        "context": {"userId": "Practitioner/example", "patientId": EXAMPLE},
        "prefetch": prefetch_from_bundle(bundle, service["prefetch"], EXAMPLE),
    }
    response = requests.post(f"{base_url}/cds-services/{service['id']}", json=request, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_image_size_is_reported(image: str, request: pytest.FixtureRequest, record_property: Any) -> None:
    """The image's size is printed at the end of the run and recorded (junit property image_size_bytes); it stays
    under 800 MB."""
    size = image_size(image)
    request.config.stash[IMAGE_SIZE] = (image, size)
    record_property("image_size_bytes", size)
    print(f"container image {image}: {size / 1e6:.1f} MB")
    assert 0 < size < SIZE_LIMIT


def test_image_runs_as_uid_10001_by_default(image: str) -> None:
    """The image's configured user is 10001:10001 (not root), as the Kubernetes securityContext expects."""
    assert inspect_image(image)["Docker"]["config"]["User"] == f"{USER_ID}:{USER_ID}"


def test_healthz_answers(service: Service) -> None:
    """/healthz answers 200 (liveness)."""
    response = requests.get(f"{service.base_url}/healthz", timeout=10)
    assert (response.status_code, response.json()["status"]) == (200, "ok")


def test_readyz_is_ready(service: Service) -> None:
    """/readyz answers 200 with every check passing: the SQLite database in the volume at the current schema, the
    knowledge base and the value sets loaded."""
    response = requests.get(f"{service.base_url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    ready = response.json()
    assert ready["status"] == "ready"
    assert ready["checks"] == {"database": True, "schema": True, "knowledge_base": True, "value_sets": True}


def test_discovery_lists_the_service(service: Service) -> None:
    """Discovery lists the patient-view service with its prefetch templates, each for the context's patient."""
    response = requests.get(f"{service.base_url}/cds-services", timeout=10)
    assert response.status_code == 200
    assert_valid_cds("discoveryResponse", response.json())
    (listed,) = response.json()["services"]
    assert (listed["id"], listed["hook"]) == ("nxp2-jdm-risk", "patient-view")
    assert {"patient", "observations", "conditions"} <= set(listed["prefetch"])
    assert all("{{context.patientId}}" in template for template in listed["prefetch"].values())


def test_patient_view_returns_the_example_cards(service: Service) -> None:
    """A patient-view call with an example patient's data answers the cards that example promises (its entry in
    examples/patients/index.json)."""
    index = json.loads((ROOT / "examples" / "patients" / "index.json").read_text(encoding="utf-8"))
    (expected,) = [p["expected_cards"] for p in index["patients"] if p["patient"] == EXAMPLE]
    answer = patient_view(service.base_url)
    assert_valid_cds("serviceResponse", answer)
    assert card_tiers(answer) == expected


def test_feedback_is_stored_in_the_volume(service: Service) -> None:
    """Feedback on an issued card is answered 200 and is then in the SQLite database in the volume."""
    card = patient_view(service.base_url)["cards"][0]["uuid"]
    reason = {"system": "urn:nxp2-cds:CodeSystem:override-reason", "code": "already-managed"}
    item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-24T12:05:00Z"}
    document = {"feedback": [item | {"overrideReason": {"reason": reason | {"display": "Already aware"}}}]}
    assert_valid_cds("feedbackRequest", document)
    response = requests.post(f"{service.base_url}/cds-services/nxp2-jdm-risk/feedback", json=document, timeout=10)
    assert response.status_code == 200, response.text
    database = service.volume / "nxp2-cds.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as connection:
        rows = connection.execute("SELECT card_uuid, outcome FROM feedback WHERE card_uuid = ?", (card,)).fetchall()
    connection.close()
    assert rows == [(card, "overridden")]


def test_every_service_process_runs_as_uid_10001(service: Service) -> None:
    """The server and each of its workers run with user and group 10001 (real, effective, saved, filesystem)."""
    processes = [service.running.pid, *descendants(service.running.pid)]
    assert len(processes) >= 2  # gunicorn's arbiter and at least one worker
    assert {p: ids(p) for p in processes} == {p: ({USER_ID}, {USER_ID}) for p in processes}


def test_the_image_healthcheck_passes(image: str, service: Service) -> None:
    """The image's HEALTHCHECK command, run in the container beside the service, succeeds (it follows the port)."""
    test = inspect_image(image)["Docker"]["config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    result = run(service.container, test[1:], env=service.env, timeout=30)
    assert result.returncode == 0, result.stderr


def test_sigterm_stops_the_service_cleanly(service: Service, stopped: Stopped) -> None:
    """SIGTERM to the service's PID stops it within 30 s with exit code 0, and no process of it is left."""
    assert stopped.exit_code == 0, service.running.log_tail()
    assert stopped.seconds < STOP_SECONDS
    assert len(stopped.processes) >= 2
    assert [p for p in stopped.processes if alive(p)] == []
    assert "Shutting down: Master" in service.running.log.read_text()


def test_nothing_but_the_volume_and_tmp_is_written(service: Service, stopped: Stopped) -> None:
    """From start to stop, the service writes nothing in the container's root filesystem outside its volume and
    /tmp (so it runs on a read-only root filesystem); the volume holds its database."""
    after = snapshot(service.container.root, skip=[VOLUME, "/tmp"])
    written = {p: c for p, c in changes(service.before, after).items() if BUILDAH_OWN.get(p) != c}
    assert written == {}
    assert (service.volume / "nxp2-cds.sqlite3").is_file()
