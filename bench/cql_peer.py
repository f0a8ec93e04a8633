"""The CQL-engine baseline (issue 16): the same payloads through a CQL CDS service and through ours, over HTTP, in
the same run. ``python -m bench --cql DIR``.

DIR is the user's own copy of the CQL peer (``d=$(mktemp -d) && cp -r ../shared/peers/cql-engine "$d"``, then
``--cql "$d/cql-engine"``): a CDS Hooks service on Node (cql-execution running ELM translated from a CQL library of
the same predictors, cql-exec-fhir's PatientSource). It is a baseline, never a dependency: nothing here reads it
unless DIR is given, and none of its code is copied into this project. Its ``start.sh`` (which builds it with
``npm ci`` the first time) starts it on a free 127.0.0.1 port and writes ``server.pid``; it is stopped by that PID.

Both services get the same bytes (bench.workload: a Patient, 5 Conditions and N Observations, most of them unrelated;
the peer reads every resource of every prefetch key, so it needs no other request) from the same client: one
keep-alive connection each, TCP_NODELAY, requests sent one after another, the two services interleaved round by
round so drift on the machine hits both alike. Our service runs as the HTTP scenario runs it (bench.servers: gunicorn
as `nxp2-cds serve` configures it). The peer runs in its default mode (``per-request``: a fresh PatientSource per
request, as AHRQ CDS Connect's CQL Services do), and, in a full run, also in its tuned ``shared`` mode.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench import workload
from bench.http_scenario import SERVICE, free_port, server
from bench.stats import percentile

ROOT = Path(__file__).resolve().parents[1]
PEER_PATH = "/cds-services/peer"
SIZES = (10, 100, 1000)
PEER_ROUNDS = {10: 40, 100: 40, 1000: 20}
QUICK_PEER_ROUNDS = {10: 6, 100: 6, 1000: 4}
SERVICE_PER_ROUND = 5
"""Our service answers in milliseconds: five of its requests per peer request, in each round."""
WARMUP = 3
REQUEST_TIMEOUT = 120.0
SIZE_BUDGET_SECONDS = 120.0
"""No size takes longer than this, however slow the peer (the rounds measured so far are kept)."""
START_TIMEOUT = 600.0
"""start.sh runs npm ci the first time (the registry), then translates the CQL; then it waits 15 s at most."""
PEER_FILES = ("start.sh", "server.mjs", "package.json")
SERVER_TIMING = re.compile(r"cql;dur=([\d.]+)")


class PeerError(RuntimeError):
    """The CQL peer cannot be used from this folder; the message says why."""


def check_folder(directory: Path) -> Path:
    """The peer's folder, resolved, or :class:`PeerError` saying what is wrong with it."""
    folder = directory.expanduser().resolve()
    missing = [name for name in PEER_FILES if not (folder / name).is_file()]
    if missing:
        raise PeerError(f"{folder} is not a copy of the CQL peer (no {', '.join(missing)})")
    if folder == (ROOT.parent / "shared" / "peers" / "cql-engine").resolve() or not os.access(folder, os.W_OK):
        raise PeerError(
            f"{folder} is read-only or the shared original: copy it first, "
            '`d=$(mktemp -d) && cp -r ../shared/peers/cql-engine "$d" && chmod -R u+w "$d"`, then '
            '`python -m bench --cql "$d/cql-engine"`'
        )
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerError("the CQL peer needs Node 20 or newer and npm on PATH")
    return folder


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already dead and waiting for its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_peer(pid: int) -> bool:
    try:
        return b"server.mjs" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop(folder: Path, pid: int | None) -> None:
    """Stop the peer this run started, by the PID its start.sh wrote (TERM, then KILL after 5 s)."""
    pid_file = folder / "server.pid"
    if pid is None and pid_file.is_file():  # start.sh failed after starting node
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid = None
    if pid is not None and _alive(pid) and _is_peer(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


def _not_running(folder: Path) -> None:
    """No peer started by someone else runs from ``folder`` (its start.sh would answer "already running")."""
    pid_file = folder / "server.pid"
    if pid_file.is_file():
        try:
            stale = int(pid_file.read_text().strip())
        except ValueError:
            stale = 0
        if stale and _alive(stale):  # not ours to stop
            raise PeerError(f"a CQL peer already runs from {folder} (PID {stale}); stop it with {folder}/stop.sh")
        pid_file.unlink()


def _start(folder: Path, port: int, mode: str) -> int:
    """Run the peer's start.sh on ``port``; its PID (from server.pid)."""
    pid_file = folder / "server.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQL_PEER_")} | {
        "CQL_PEER_HOST": "127.0.0.1",
        "CQL_PEER_PORT": str(port),
        "CQL_PEER_SOURCE": mode,
        "CQL_PEER_NOW": workload.AT.isoformat().replace("+00:00", "Z"),  # the workload's dates are relative to it
        "CQL_PEER_LOG": "0",
    }
    try:
        done = subprocess.run(
            ["bash", "start.sh"], cwd=folder, env=env, capture_output=True, text=True, timeout=START_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{folder}/start.sh did not finish in {START_TIMEOUT:g} s") from exc
    if done.returncode != 0 or not pid_file.is_file():
        raise PeerError(f"{folder}/start.sh failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    pid = int(pid_file.read_text().strip())
    if not _is_peer(pid):
        raise PeerError(f"PID {pid} in {pid_file} is not the peer's node server.mjs")
    return pid


def versions(folder: Path) -> dict[str, Any]:
    """Node's version and every dependency of the peer's package.json: declared and installed."""
    declared: dict[str, str] = json.loads((folder / "package.json").read_text()).get("dependencies", {})
    installed: dict[str, str | None] = {}
    for name in declared:
        manifest = folder / "node_modules" / name / "package.json"
        installed[name] = json.loads(manifest.read_text()).get("version") if manifest.is_file() else None
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30, check=True)
    return {"node": node.stdout.strip(), "declared": declared, "installed": installed}


class Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 with TCP_NODELAY; POSTs a body, times the whole exchange."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.connection = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        connection.connect()
        assert connection.sock is not None
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def post(self, body: bytes) -> tuple[float, int, bytes, str]:
        """Seconds, status, response body and its Server-Timing header; a broken connection is reopened."""
        started = time.perf_counter()
        try:
            self.connection.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
            response = self.connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = self._connect()
            return time.perf_counter() - started, 0, b"", ""
        return time.perf_counter() - started, response.status, content, response.getheader("Server-Timing") or ""

    def close(self) -> None:
        self.connection.close()


def _summary(values_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 3) if values_ms else None,
        "p99_ms": round(percentile(values_ms, 99), 3) if values_ms else None,
    }


def measure(peer: Client, service: Client, body: bytes, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of one peer request and :data:`SERVICE_PER_ROUND` service requests, after a warm-up."""
    times: dict[str, list[float]] = {"peer": [], "service": []}
    errors = {"peer": 0, "service": 0}
    peer_cql: list[float] = []
    clients = {"peer": peer, "service": service}

    def one(name: str, keep: bool) -> None:
        seconds, status, content, timing = clients[name].post(body)
        if status != 200 or b'"cards"' not in content:
            errors[name] += 1
            return
        if keep:
            times[name].append(seconds * 1000)
            found = SERVER_TIMING.search(timing) if name == "peer" else None
            if found:
                peer_cql.append(float(found.group(1)))

    for _ in range(WARMUP):
        one("peer", keep=False)
        one("service", keep=False)
    deadline = time.monotonic() + SIZE_BUDGET_SECONDS
    for _ in range(rounds):
        if time.monotonic() > deadline:
            break
        one("peer", keep=True)
        for _ in range(SERVICE_PER_ROUND):
            one("service", keep=True)
    if not times["peer"] or not times["service"]:
        raise PeerError(f"no successful requests (errors: {errors})")
    entry: dict[str, Any] = {
        "body_bytes": len(body),
        "peer": _summary(times["peer"]) | {"errors": errors["peer"], "server_cql_p50_ms": _p50(peer_cql)},
        "service": _summary(times["service"]) | {"errors": errors["service"]},
    }
    entry["peer_vs_service_p50"] = round(entry["peer"]["p50_ms"] / entry["service"]["p50_ms"], 1)
    return entry


def _p50(values: list[float]) -> float | None:
    return round(percentile(values, 50), 2) if values else None


def run(directory: Path, quick: bool = False) -> dict[str, Any]:
    folder = check_folder(directory)
    modes = ("per-request",) if quick else ("per-request", "shared")
    rounds = QUICK_PEER_ROUNDS if quick else PEER_ROUNDS
    bodies = {size: orjson.dumps(workload.observations_request(size)) for size in SIZES}
    results: dict[str, Any] = {
        "folder": str(folder),
        "observations": list(SIZES),
        "method": f"sequential keep-alive requests, TCP_NODELAY; per round 1 peer and {SERVICE_PER_ROUND} service "
        f"requests; {WARMUP} warm-up requests each",
        "goal_mode": "per-request",
        "modes": {},
    }
    with server("hook") as served:
        service = Client(int(served.url.rsplit(":", 1)[1]), SERVICE)
        try:
            for mode in modes:
                port, pid = free_port(), None
                _not_running(folder)
                try:
                    pid = _start(folder, port, mode)
                    results.setdefault("versions", versions(folder))
                    peer = Client(port, PEER_PATH)
                    try:
                        results["modes"][mode] = {str(n): measure(peer, service, bodies[n], rounds[n]) for n in SIZES}
                    finally:
                        peer.close()
                finally:
                    _stop(folder, pid)
        finally:
            service.close()
    return results
