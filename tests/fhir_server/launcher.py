"""Start and stop the in-memory FHIR R4 test server (``server.mjs``, Medplum's FHIR engine).

Install it first with ``scripts/install-fhir-test-server`` (``npm ci`` here; it brings its own Node 22
binary as the npm package ``node``). Then::

    with FhirTestServer() as server:
        requests.get(f"{server.url}/metadata")
        server.stats()["requests"]

Stdlib only, so it can be used from tests, benchmarks and scripts alike.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypedDict, cast

__all__ = [
    "NODE_BINARY",
    "SERVER_DIR",
    "SERVER_SCRIPT",
    "FhirTestServer",
    "FhirTestServerError",
    "ServerStats",
    "node_available",
]

SERVER_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = SERVER_DIR / "server.mjs"
NODE_MODULES = SERVER_DIR / "node_modules"
# The npm package `node` links its platform binary here during `npm ci`.
NODE_BINARY = NODE_MODULES / "node" / "bin" / "node"
MIN_NODE_MAJOR = 22
INSTALL_HINT = "run scripts/install-fhir-test-server"


class FhirTestServerError(RuntimeError):
    """The FHIR test server could not be started or answered unexpectedly."""


class ServerStats(TypedDict):
    """What ``GET /__admin/stats`` answers."""

    requests: int
    """FHIR requests served since start or the last reset (admin requests not counted)."""
    recent: list[str]
    """``"METHOD /path?query"`` of those requests, in order (at most 1000)."""


def node_available(node: Path | None = None) -> str | None:
    """Return why the server cannot run here, or None when it can."""
    node = node or NODE_BINARY
    for package in ("fhir-router", "core", "definitions"):
        if not (NODE_MODULES / "@medplum" / package / "package.json").is_file():
            return f"@medplum/{package} is not installed in {NODE_MODULES} ({INSTALL_HINT})"
    if not (node.is_file() and os.access(node, os.X_OK)):
        return f"no Node {MIN_NODE_MAJOR} binary at {node} ({INSTALL_HINT})"
    try:
        version = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{node} --version failed: {exc}"
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        return f"{node} --version answered {version!r}"
    if major < MIN_NODE_MAJOR:
        return f"{node} is Node {version}; Medplum 5 needs Node >= {MIN_NODE_MAJOR} ({INSTALL_HINT})"
    return None


class FhirTestServer:
    """One ``server.mjs`` process on a free port, bound to ``host``.

    ``delay_ms`` adds that much latency to every FHIR request. Usable as a context manager.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        base: str = "/fhir",
        delay_ms: int = 0,
        node: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        # "/fhir" or "" (FHIR at the root), as the server normalizes it
        self.base = "/" + base.strip("/") if base.strip("/") else ""
        self.delay_ms = delay_ms
        self.node = node or NODE_BINARY
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[str] | None = None
        self._url: str | None = None
        self._stdout_lines: queue.Queue[str | None] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the server and wait for its ready line; raise FhirTestServerError if it fails."""
        if self._process is not None:
            raise FhirTestServerError("server already started")
        reason = node_available(self.node)
        if reason is not None:
            raise FhirTestServerError(f"cannot start the FHIR test server: {reason}")
        command = [
            str(self.node),
            str(SERVER_SCRIPT),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--base",
            self.base or "/",
            "--delay-ms",
            str(self.delay_ms),
        ]
        self._process = subprocess.Popen(
            command,
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        # Both pipes are drained for the whole life of the process: node writes its request log to
        # stderr synchronously and would block once an unread pipe fills up.
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump_stdout, args=(self._process.stdout,), daemon=True),
            threading.Thread(target=self._pump_stderr, args=(self._process.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            self._url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _pump_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._stdout_lines.put(line)
        self._stdout_lines.put(None)

    def _pump_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr_tail.append(line.rstrip("\n"))

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self.start_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"no ready line within {self.start_timeout:.0f} s")
            try:
                line = self._stdout_lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise self._failure("the server exited before it was ready")
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # not the ready line
            if isinstance(message, dict) and message.get("ready") is True:
                return str(message["url"])

    def _failure(self, what: str) -> FhirTestServerError:
        process = self._process
        code = process.poll() if process is not None else None
        # give the stderr pump a moment to collect the last words
        if code is not None and len(self._threads) > 1:
            self._threads[1].join(timeout=2)
        tail = "\n".join(self._stderr_tail) or "(nothing)"
        return FhirTestServerError(f"FHIR test server failed to start: {what} (exit code {code})\nstderr:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM), kill it if it does not stop within ``timeout`` s."""
        process, self._process = self._process, None
        self._url = None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads = []
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """The FHIR base URL, e.g. ``http://127.0.0.1:41207/fhir``."""
        if self._url is None:
            raise FhirTestServerError("server not started")
        return self._url

    @property
    def admin_url(self) -> str:
        """The server's root URL, where ``/__admin/...`` lives."""
        url = self.url
        return url[: len(url) - len(self.base)]

    @property
    def stderr_tail(self) -> list[str]:
        """The last lines the server wrote to stderr (its request log)."""
        return list(self._stderr_tail)

    def _admin(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.admin_url}/__admin/{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> ServerStats:
        """FHIR requests served since start or the last ``reset()``."""
        return cast(ServerStats, self._admin("GET", "stats"))

    def reset(self) -> None:
        """Empty the store and zero the request counter."""
        self._admin("POST", "reset")
