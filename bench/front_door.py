"""The front door: `nxp2-cds serve` with nginx in front of gunicorn (today's) beside gunicorn alone (before), same
workers and threads, measured in the same run: closed-loop throughput, p99 at a fixed 100 requests/s, and p99 of a
normal client while 100 clients send their headers at one byte a second. Loopback only, bounded in time and count;
every process started here is stopped by its PID (bench/loopback.py)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from bench import workload
from bench.http_scenario import _loadgen, free_port
from bench.loopback import SERVICE, Crowd, paced_calls, started

WORKERS, THREADS = 2, 4  # as deploy/kubernetes runs it
SLOW_CLIENTS = 100


@contextmanager
def serve(front_door: str) -> Iterator[int]:
    """`nxp2-cds serve` with ``front_door`` (nginx or gunicorn) on a free loopback port; yields the port."""
    port = free_port()
    folder = tempfile.mkdtemp(prefix=f"nxp2-bench-{front_door}-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXP2_CDS_")} | {
        "NXP2_CDS_SERVER__FRONT_DOOR": front_door,
        "NXP2_CDS_DATABASE_URL": f"sqlite:///{folder}/bench.sqlite3",
    }
    command = [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)]
    command += ["--workers", str(WORKERS), "--threads", str(THREADS)]
    ready = f"http://127.0.0.1:{port}/healthz"
    # killed as a group after 40 s: gunicorn alone may wait for the slow clients' threads, not our business
    with started(
        command,
        ready_url=ready,
        what=f"nxp2-cds serve ({front_door})",
        cwd=folder,
        env=env,
        stop_seconds=40,
        own_group=True,
    ):
        yield port


def under_slow_clients(port: int, body: bytes, requests_count: int, rate: float) -> dict[str, Any]:
    """p50/p99 of a normal client (``rate`` hook calls a second, 5 s timeout each) while 100 slow-header clients
    are connected; timed-out or failed calls are counted, not timed."""
    crowd = Crowd(port, {"slow_header": SLOW_CLIENTS}, seconds=requests_count / rate + 10).start()
    try:
        time.sleep(1.5)
        calls = paced_calls(port, body, requests_count, rate, timeout=5, stop_after=requests_count / rate + 10)
    finally:
        crowd.stop()
    answered = bool(calls.seconds)
    return {
        "slow_clients": SLOW_CLIENTS,
        "requests": requests_count,
        "sent": calls.sent,
        "answered": len(calls.seconds),
        "failed_or_timed_out": len(calls.failures),
        "p50_ms": round(calls.p50_ms, 3) if answered else None,
        "p99_ms": round(calls.p99_ms, 3) if answered else None,
    }


def run(quick: bool = False) -> dict[str, Any]:
    from cds_service.server.supervisor import find_nginx

    if find_nginx() is None:
        return {"skipped": "nginx is not installed (Debian: apt-get install nginx)"}
    body = orjson.dumps(workload.request(100))
    results: dict[str, Any] = {"workers": WORKERS, "threads": THREADS, "prefetch_resources": 100}
    results["load_average_before"] = round(os.getloadavg()[0], 2)  # other work on the machine skews both alike
    kinds = ("gunicorn", "nginx")
    with serve("gunicorn") as old_port, serve("nginx") as new_port:
        ports = {"gunicorn": old_port, "nginx": new_port}
        urls = {kind: f"http://127.0.0.1:{port}{SERVICE}" for kind, port in ports.items()}
        for kind in kinds:  # warm every worker thread of both
            _loadgen("closed", urls[kind], body, concurrency=8, duration=1.0)
        closed: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for _ in range(2):  # alternate, so drift (and the other work on the machine) hits both alike
            for kind in kinds:
                closed[kind].append(
                    _loadgen("closed", urls[kind], body, concurrency=16, duration=3.0 if quick else 8.0)
                )
        for kind in kinds:
            best = max(closed[kind], key=lambda r: r["throughput_rps"])
            discovery = f"http://127.0.0.1:{ports[kind]}/cds-services"  # no body, no database: the door's own cost
            results[kind] = {
                "throughput": best | {"runs_rps": [r["throughput_rps"] for r in closed[kind]]},
                "discovery_throughput": _loadgen(
                    "closed", discovery, None, concurrency=16, duration=3.0 if quick else 5.0
                ),
                "at_100_rps": _loadgen("open", urls[kind], body, rate=100, duration=5 if quick else 10),
            }
        for kind in ("nginx", "gunicorn"):  # gunicorn last: its threads are held until the slow clients leave
            results[kind]["under_slow_clients"] = under_slow_clients(ports[kind], body, 100 if quick else 200, 20.0)
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    old, new = results["gunicorn"], results["nginx"]
    results["throughput_ratio"] = round(new["throughput"]["throughput_rps"] / old["throughput"]["throughput_rps"], 3)
    results["p99_at_100_rps_ratio"] = round(new["at_100_rps"]["p99_ms"] / old["at_100_rps"]["p99_ms"], 3)
    results["discovery_throughput_ratio"] = round(
        new["discovery_throughput"]["throughput_rps"] / old["discovery_throughput"]["throughput_rps"], 3
    )
    return results
