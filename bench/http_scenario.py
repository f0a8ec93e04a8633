"""HTTP: the hook through the production server configuration (gunicorn as `nxp2-cds serve` runs it, bench.servers)
against a route on the same server that only reads and parses the same body (issue 16), in the same run; the load
comes from a separate process (wrk when installed, else bench.loadgen), on loopback, bounded in time and count."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import requests

from bench import workload
from bench.apps import PARSE_ROUTE
from bench.loopback import started

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "/cds-services/nxp2-jdm-risk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    url: str
    pid: int
    """gunicorn's master process"""


@contextmanager
def server(kind: str = "hook", *, workers: int | None = None, threads: int | None = None) -> Iterator[Served]:
    """bench.servers on a free loopback port until the block ends; stopped by its PID (bounded waits,
    bench.loopback.started)."""
    port = free_port()
    metrics = tempfile.mkdtemp(prefix="nxp2-bench-metrics-")
    env = os.environ | {"BENCH_LOG_LEVEL": "INFO", "PROMETHEUS_MULTIPROC_DIR": metrics}
    command = [sys.executable, "-m", "bench.servers", kind, "--port", str(port)]
    command += [f"--workers={workers}"] if workers else []
    command += [f"--threads={threads}"] if threads else []
    url = f"http://127.0.0.1:{port}"
    try:
        with started(command, ready_url=url + "/cds-services", what=f"{kind} server", cwd=ROOT, env=env) as process:
            yield Served(url, process.pid)
    finally:
        shutil.rmtree(metrics, ignore_errors=True)


def _wrk(url: str, body: bytes | None, duration: float, connections: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            body_file = script.name + ".json"
            Path(body_file).write_bytes(body)
            script.write(
                'local f = io.open("' + body_file + '", "rb"); wrk.body = f:read("*all"); f:close()\n'
                'wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"\n'
            )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "tool": "wrk",
        "throughput_rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": int(non2xx.group(1)) if non2xx else 0,
    }


def _loadgen(mode: str, url: str, body: bytes | None, **options: Any) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.loadgen", mode, url]
    if body is not None:
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as handle:
            handle.write(body)
        command += ["--body", handle.name]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out) | {"tool": "bench.loadgen"}
    return result


def throughput(url: str, body: bytes | None, duration: float, connections: int = 16) -> dict[str, Any]:
    if shutil.which("wrk"):
        return _wrk(url, body, duration, connections)
    return _loadgen("closed", url, body, concurrency=connections, duration=duration)


def run(quick: bool = False) -> dict[str, Any]:
    body = orjson.dumps(workload.request(100))
    duration = 3.0 if quick else 8.0
    results: dict[str, Any] = {"prefetch_resources": 100, "body_bytes": len(body)}
    with server("hook") as served:
        hook_endpoint = served.url + SERVICE
        parse_endpoint = served.url + PARSE_ROUTE
        for endpoint in (hook_endpoint, parse_endpoint):
            check = requests.post(endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=30)
            if check.status_code != 200 or b'"cards"' not in check.content:
                raise RuntimeError(f"{endpoint} answered {check.status_code}")
        throughput(hook_endpoint, body, 1.0)  # warm every worker thread
        throughput(parse_endpoint, body, 1.0)
        hooks, parses = [], []
        for _ in range(2):  # alternate, so drift hits both alike
            hooks.append(throughput(hook_endpoint, body, duration))
            parses.append(throughput(parse_endpoint, body, duration))
        results["hook"] = _best(hooks)
        results["parse_only"] = _best(parses)
        results["hook_vs_parse_throughput"] = round(
            results["hook"]["throughput_rps"] / results["parse_only"]["throughput_rps"], 3
        )
        results["at_100_rps"] = _loadgen("open", hook_endpoint, body, rate=100, duration=5 if quick else 10)
    return results


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(runs, key=lambda r: r["throughput_rps"])
    return best | {"runs_rps": [r["throughput_rps"] for r in runs]}
