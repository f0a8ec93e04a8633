"""Tools of the front-door fault tests beside those they share with the bench (bench/loopback.py: hostile
connections, a paced client): single calls, the memory of a server's process tree, nginx's presence. Loopback only;
every loop is bounded in time and count; nothing here starts a process."""

from __future__ import annotations

import errno
import http.client
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from bench.loopback import LOOPBACK
from cds_service.server.supervisor import find_nginx

REQUIRE_FRONT_DOOR = "NXP2_CDS_REQUIRE_FRONT_DOOR"
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "deployment.yaml"


def require_nginx() -> None:
    """Skip (or fail, with NXP2_CDS_REQUIRE_FRONT_DOOR=1) when nginx is not installed."""
    if find_nginx() is None:
        message = "nginx is not installed (Debian: apt-get install nginx)"
        if os.environ.get(REQUIRE_FRONT_DOOR) == "1":
            pytest.fail(f"{message} ({REQUIRE_FRONT_DOOR}=1)", pytrace=False)
        pytest.skip(message)


# -- single calls ----------------------------------------------------------------------------------------------------


def post(
    port: int, path: str, body: bytes, timeout: float = 30.0, close: bool = True
) -> tuple[int, dict[str, str], bytes]:
    """One POST on a new connection; (status, headers, body)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if close:
            headers["Connection"] = "close"
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def is_reset(exc: BaseException) -> bool:
    """A connection the server accepted and then dropped (not one it refused)."""
    if isinstance(exc, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


def outcome(body: bytes) -> dict[str, object]:
    document: dict[str, object] = orjson.loads(body)
    assert document["resourceType"] == "OperationOutcome", document
    return document


# -- memory ----------------------------------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return found


def _proc_kib(path: str, key: str) -> int:
    """The value of ``key`` (a line ``Key: N kB``) in a /proc file, in bytes; 0 when the process is gone."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """The proportional set size of a process (its private memory plus its share of shared pages): summed over a
    process tree it counts each page once, as the container's memory limit does."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def rss_bytes(pid: int) -> int:
    """The resident set size of a process: what it has touched, shared pages included."""
    return _proc_kib(f"/proc/{pid}/status", "VmRSS")


def workers_of(supervisor: int) -> list[int]:
    """The gunicorn workers: the processes of the tree whose parent is gunicorn's arbiter."""
    tree = process_tree(supervisor)
    names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree}
    pythons = [pid for pid in tree if b"cds_service" in names[pid] and pid != supervisor]
    arbiters = [pid for pid in pythons if int(Path(f"/proc/{pid}/stat").read_text().split()[3]) == supervisor]
    return [pid for pid in pythons if pid not in arbiters]


def tree_memory(root: int) -> int:
    return sum(pss_bytes(pid) for pid in process_tree(root))


@dataclass
class MemorySampler:
    """The process tree's memory (PSS) every ``interval`` seconds while it runs; the highest seen."""

    root: int
    interval: float = 0.02
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True, name="memory-sampler")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_memory(self.root))
            self.samples += 1
            self._stop.wait(self.interval)


def manifest_memory_limit() -> int:
    """The nxp2-cds container's memory limit in deploy/kubernetes/deployment.yaml, in bytes."""
    containers = MANIFEST.read_text().split("\n      containers:\n", 1)[1]
    match = re.search(r"limits:\n(?:\s+\w+: .*\n)*?\s+memory: (\d+)(Ki|Mi|Gi)?\n", containers)
    assert match, "no memory limit for the nxp2-cds container"
    return int(match.group(1)) * {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, None: 1}[match.group(2)]


def run_threads(target: Callable[[int], None], count: int, seconds: float) -> None:
    threads = [threading.Thread(target=target, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds)
