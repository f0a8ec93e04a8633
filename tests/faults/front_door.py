"""Tools of the front-door fault tests: hostile connections (slow, half-sent, silent), a well-behaved client that
measures its latency, and the memory of a server's process tree. Loopback only; every loop is bounded in time and
count; nothing here starts a process."""

from __future__ import annotations

import errno
import http.client
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from cds_service.server.supervisor import find_nginx

REQUIRE_FRONT_DOOR = "NXP2_CDS_REQUIRE_FRONT_DOOR"
LOOPBACK = "127.0.0.1"
SERVICE = "/cds-services/nxp2-jdm-risk"
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "deployment.yaml"


def require_nginx() -> None:
    """Skip (or fail, with NXP2_CDS_REQUIRE_FRONT_DOOR=1) when nginx is not installed."""
    if find_nginx() is None:
        message = "nginx is not installed (Debian: apt-get install nginx)"
        if os.environ.get(REQUIRE_FRONT_DOOR) == "1":
            pytest.fail(f"{message} ({REQUIRE_FRONT_DOOR}=1)", pytrace=False)
        pytest.skip(message)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# -- hostile connections ---------------------------------------------------------------------------------------------


HEADER_START = f"POST {SERVICE} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\nX-Slow: ".encode()


@dataclass
class Hostile:
    """One hostile connection: what it does, when it last sent something, when the server closed it."""

    kind: str
    sock: socket.socket
    opened: float
    last_sent: float
    closed: float | None = None
    answer: bytes = b""


@dataclass
class Crowd:
    """Hostile connections kept up for ``seconds`` from one thread (each kind is reopened when the server closes it,
    as an attacker would):

    - ``slow_header``: a request header one byte a second, never finished;
    - ``half_body``: headers announcing 100 KB of body, 100 bytes of it, then nothing;
    - ``slow_body``: headers announcing 100 KB, then one byte a second;
    - ``silent``: connects and sends nothing.
    """

    port: int
    counts: dict[str, int]
    seconds: float
    reopen: bool = True
    finished: list[Hostile] = field(default_factory=list)
    opened_total: int = 0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def _open(self, kind: str, selector: selectors.BaseSelector) -> Hostile:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=5)
        sock.setblocking(False)
        now = time.monotonic()
        if kind in ("half_body", "slow_body"):
            head = (
                f"POST {SERVICE} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n"
            ).encode()
            sock.send(head + (b"{" + b" " * 99 if kind == "half_body" else b"{"))
        elif kind == "slow_header":
            sock.send(HEADER_START)
        hostile = Hostile(kind, sock, now, now)
        selector.register(sock, selectors.EVENT_READ, hostile)
        self.opened_total += 1
        return hostile

    def start(self) -> Crowd:
        self._thread = threading.Thread(target=self._run, name="hostile-crowd", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        live: list[Hostile] = []
        try:
            for kind, count in self.counts.items():
                live += [self._open(kind, selector) for _ in range(count)]
            deadline = time.monotonic() + self.seconds
            next_trickle = time.monotonic() + 1.0
            while not self._stop.is_set() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.05):
                    hostile: Hostile = key.data
                    if self._closed_by_server(hostile):
                        selector.unregister(hostile.sock)
                        hostile.sock.close()
                        live.remove(hostile)
                        self.finished.append(hostile)
                        if self.reopen and time.monotonic() < deadline - 1:
                            live.append(self._open(hostile.kind, selector))
                if time.monotonic() >= next_trickle:
                    next_trickle += 1.0
                    for hostile in live:
                        if hostile.kind in ("slow_header", "slow_body"):
                            try:
                                hostile.sock.send(b"a" if hostile.kind == "slow_header" else b" ")
                                hostile.last_sent = time.monotonic()
                            except OSError:
                                pass  # closed: the selector reports it
        finally:
            for hostile in live:
                selector.unregister(hostile.sock)
                hostile.sock.close()
            selector.close()

    @staticmethod
    def _closed_by_server(hostile: Hostile) -> bool:
        try:
            data = hostile.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            hostile.answer += data
            return False
        hostile.closed = time.monotonic()
        return True


# -- a well-behaved client -------------------------------------------------------------------------------------------


@dataclass
class Latencies:
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        return percentile(self.seconds, 99) * 1000

    @property
    def p50_ms(self) -> float:
        return percentile(self.seconds, 50) * 1000


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


def measure(port: int, body: bytes, count: int, rate: float) -> Latencies:
    """``count`` hook calls at ``rate`` a second on one keep-alive connection (reopened if it breaks); the latency
    of each from its scheduled time."""
    result = Latencies()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    began = time.monotonic()
    for index in range(count):
        scheduled = began + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            connection.request("POST", SERVICE, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                result.failures.append(f"status {response.status}")
            else:
                result.seconds.append(time.monotonic() - scheduled)
        except (OSError, http.client.HTTPException) as exc:
            result.failures.append(type(exc).__name__)
            connection.close()
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    connection.close()
    return result


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


def pss_bytes(pid: int) -> int:
    """The proportional set size of a process (its private memory plus its share of shared pages): summed over a
    process tree it counts each page once, as the container's memory limit does."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """The resident set size of a process: what it has touched, shared pages included."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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
