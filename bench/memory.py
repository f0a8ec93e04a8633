"""Memory: resident set size before and after 10,000 hook calls in one process (100-resource prefetch); and the peak
memory of one large request (issue 16): how far a production worker's resident set rises above where it stood while
it serves one ~9 MB request, against the size of that body."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import requests

from bench import workload
from bench.http_scenario import SERVICE, server

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import gc, json, sys, orjson
from bench import workload
from bench.apps import service_app

def rss_kb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])

calls = int(sys.argv[1])
app = service_app(log_level='INFO')
client = app.test_client()
recorder = app.extensions['nxp2_cds'].recorder
body = orjson.dumps(workload.request(100))
def call(i):
    # a fresh hook instance each time, as in real use (each issued card is recorded)
    document = body.replace(b'7f2d1c0e-4b9a-4c1e-9f3a-0d6c5b4a3921', b'7f2d1c0e-4b9a-4c1e-9f3a-%012d' % i)
    assert client.post('/cds-services/nxp2-jdm-risk', data=document, content_type='application/json').status_code == 200
for i in range(300):
    call(i)
recorder.flush(30); gc.collect()
before = rss_kb()
for i in range(300, 300 + calls):
    call(i)
recorder.flush(30); gc.collect()
after = rss_kb()
print(json.dumps({'calls': calls, 'rss_before_kb': before, 'rss_after_kb': after, 'cards_written': recorder.written}))
"""


LARGE_RESOURCES = 13_500
"""A chart of 13,500 resources: an 8.9 MB request (the body size issue 16 measured), under the 10 MB default limit."""
PEAK_REPEATS = 3


def run(quick: bool = False) -> dict[str, Any]:
    calls = 2000 if quick else 10_000
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["growth"] = round((result["rss_after_kb"] - result["rss_before_kb"]) / result["rss_before_kb"], 4)
    result["peak_per_request"] = peak_per_request()
    return result


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for PID {pid}")


def _worker_of(master: int) -> int:
    """The one worker process of the gunicorn master ``master``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                return int(stat.parent.name)
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn {master} has no worker")


def _reset_peak(pid: int) -> bool:
    """Reset the kernel's high-water mark of ``pid``'s resident set to its current size (Linux ≥ 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return abs(_status_kb(pid, "VmHWM") - _status_kb(pid, "VmRSS")) < 1024


def _one_peak(session: requests.Session, url: str, body: bytes, pid: int) -> dict[str, int | str]:
    """The worker's resident set before one request and its peak during it (kernel high-water mark, or sampled every
    millisecond where the mark cannot be reset)."""
    before = _status_kb(pid, "VmRSS")
    exact = _reset_peak(pid)
    sampled = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            sampled.append(_status_kb(pid, "VmRSS"))

    sampler = None if exact else threading.Thread(target=sample, daemon=True)
    if sampler is not None:
        sampler.start()
    response = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
    stop.set()
    if sampler is not None:
        sampler.join(5)
    if response.status_code != 200:
        raise RuntimeError(f"the large request answered {response.status_code}")
    peak = _status_kb(pid, "VmHWM") if exact else max(sampled)
    return {"rss_before_kb": before, "peak_kb": peak, "method": "VmHWM" if exact else "sampled VmRSS"}


def peak_per_request() -> dict[str, Any]:
    """One worker (production's threads, RequestGuard and malloc settings), a small request and one large request to
    warm it, then :data:`PEAK_REPEATS` large requests, each measured from where the worker stood before it."""
    body = orjson.dumps(workload.request(LARGE_RESOURCES))
    small = orjson.dumps(workload.request(100))
    with server("hook", workers=1) as served, requests.Session() as session:
        pid = _worker_of(served.pid)
        url = served.url + SERVICE
        for warm in (small, body):
            assert session.post(url, data=warm, headers={"Content-Type": "application/json"}, timeout=120).ok
        first_rss = _status_kb(pid, "VmRSS")
        runs = [_one_peak(session, url, body, pid) for _ in range(PEAK_REPEATS)]
    growth = [int(r["peak_kb"]) - int(r["rss_before_kb"]) for r in runs]
    return {
        "resources": LARGE_RESOURCES,
        "body_bytes": len(body),
        "worker_rss_after_warm_up_kb": first_rss,
        "runs": runs,
        "peak_growth_kb": growth,
        "method": runs[0]["method"],
        "peak_growth_vs_body": round(max(growth) * 1024 / len(body), 2),
        "median_peak_growth_vs_body": round(statistics.median(growth) * 1024 / len(body), 2),
    }
