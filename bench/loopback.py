"""Loopback tools of the front-door bench (bench/front_door.py) and the front-door fault tests (tests/faults/):
hostile connections (slow, half-sent, silent), a well-behaved client that calls the hook at a fixed rate and times
each call, and a server process started and stopped by its PID (also the HTTP scenario's, bench/http_scenario.py).
Loopback only; every loop is bounded in time and count."""

from __future__ import annotations

import http.client
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.stats import percentile

LOOPBACK = "127.0.0.1"
SERVICE = "/cds-services/nxp2-jdm-risk"

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
    """The latency of each call answered 200 (from its scheduled time), and what went wrong with the others."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.seconds) + len(self.failures)

    @property
    def p99_ms(self) -> float:
        return percentile(self.seconds, 99) * 1000

    @property
    def p50_ms(self) -> float:
        return percentile(self.seconds, 50) * 1000


def paced_calls(
    port: int, body: bytes, count: int, rate: float, *, timeout: float = 10.0, stop_after: float | None = None
) -> Latencies:
    """``count`` hook calls at ``rate`` a second on one keep-alive connection (reopened when it breaks), each with
    ``timeout``; the latency of each from its scheduled time. With ``stop_after`` (seconds), no call starts later
    than that after the first (a starved server must not keep the caller for minutes)."""
    result = Latencies()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    began = time.monotonic()
    for index in range(count):
        if stop_after is not None and time.monotonic() > began + stop_after:
            break
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
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    connection.close()
    return result


# -- a server process ------------------------------------------------------------------------------------------------


@contextmanager
def started(
    command: list[str],
    *,
    ready_url: str,
    what: str,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stop_seconds: float = 30.0,
    own_group: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (its output discarded) until the block ends; enter once ``ready_url`` answers 200 (a
    RuntimeError naming ``what`` if it exits or does not answer within 60 s). Stopped by its PID: SIGTERM, and
    SIGKILL if it has not exited within ``stop_seconds`` — to its whole process group with ``own_group`` (it is
    started in a session of its own)."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=own_group,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            if own_group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait(10)
