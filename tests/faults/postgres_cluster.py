"""A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temporary folder, on a free loopback port), so a test
may stop, pause and restart its database without touching the shared server on 5432.

As root, the server's programs run as the ``postgres`` user (``runuser``) in a folder that user owns. Every process
is signalled by its PID (the postmaster's, from ``postmaster.pid``, and its children's). When the programs are
missing the tests are skipped, or fail with ``NXP2_CDS_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
import pytest

from tests.db_fixtures import REQUIRE_POSTGRES
from tests.server_process import free_port

START_SECONDS = 30.0


def _binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class Cluster:
    """One PostgreSQL server: :meth:`stop` (fast shutdown: connections refused), :meth:`start`, :meth:`pause` and
    :meth:`resume` (SIGSTOP/SIGCONT to the postmaster and every backend: a database that hangs without a word)."""

    def __init__(self, root: Path, binaries: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self._bin = binaries
        self._paused: list[int] = []
        self._as_postgres = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=START_SECONDS, cwd=self.root)

    def init(self) -> None:
        self._run(
            str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        log = str(self.root / "log")
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def running(self) -> None:
        """Resumed, and started when it is not running (whatever an earlier test left it as)."""
        self.resume()
        if self.pid is None:
            self.start()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), waited for by PID."""
        self.resume()
        pid = self.pid
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + START_SECONDS
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the postmaster and then every backend it forked."""
        pid = self.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        self._paused = [pid]
        for child in _children(pid):
            os.kill(child, signal.SIGSTOP)
            self._paused.append(child)

    def resume(self) -> None:
        for pid in reversed(self._paused):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5", autocommit=True
        ) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def count(self, database: str, sql: str) -> int:
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=5"
        ) as connection:
            row = connection.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A started cluster in a temporary folder; stopped (by PID) and deleted afterwards."""
    binaries = _binaries()
    if binaries is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        message = "PostgreSQL's initdb/pg_ctl (or runuser) are not installed"
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{message} ({REQUIRE_POSTGRES}=1)", pytrace=False)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="nxp2-cds-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = Cluster(root, binaries)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
