"""The built image run with buildah (vfs storage, chroot isolation), as `scripts/build-image` builds it without a
Docker daemon: working containers, the image's own command as a real process, and the container's root filesystem.

Chroot isolation shares the host's network, so the service binds a free loopback port. The service inside is a child
of ``buildah-chroot-exec`` (itself under ``buildah run``): it is found by walking /proc and signalled by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILDAH = ("buildah", "--storage-driver", "vfs")
IMAGE_ENV = "NXP2_CDS_IMAGE"
DEFAULT_IMAGE = "localhost/nxp2-cds:test"
REQUIRE_CONTAINER = "NXP2_CDS_REQUIRE_CONTAINER"
VOLUME = "/var/lib/nxp2-cds"
USER_ID = 10001


def buildah(*args: str, timeout: float = 120.0) -> str:
    """``buildah --storage-driver vfs ARGS``; its standard output, stripped. Fails on a non-zero exit."""
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} exited with {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def image_problem(image: str) -> str | None:
    """Why ``image`` cannot be run here, or None when it can."""
    if not any((Path(d) / "buildah").is_file() for d in os.environ.get("PATH", "").split(os.pathsep) if d):
        return "buildah is not installed"
    if os.geteuid() != 0:
        return "running it with buildah (vfs storage, chroot isolation) needs root"
    try:
        buildah("inspect", "--type", "image", image, timeout=30)
    except AssertionError:
        return "not in buildah's vfs storage"
    return None


def inspect_image(image: str) -> dict[str, Any]:
    """``buildah inspect`` of the image, as JSON."""
    data: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image, timeout=30))
    return data


def image_size(image: str) -> int:
    """The image's size in bytes: its layers as stored (uncompressed)."""
    manifest = json.loads(inspect_image(image)["Manifest"])
    return sum(int(layer["size"]) for layer in manifest["layers"])


def image_command(image: str, args: Sequence[str] | None = None) -> list[str]:
    """What a container runtime runs: the image's ENTRYPOINT with ``args`` (as Kubernetes' ``args:``), or with the
    image's CMD when ``args`` is None."""
    config = inspect_image(image)["Docker"]["config"]
    entrypoint: list[str] = list(config.get("Entrypoint") or [])
    command: list[str] = list(config.get("Cmd") or []) if args is None else list(args)
    return entrypoint + command


@dataclass(frozen=True)
class Container:
    name: str
    root: Path
    """The container's root filesystem on the host (``buildah mount``)."""


@contextmanager
def working_container(image: str) -> Iterator[Container]:
    """A new working container from ``image``, mounted; removed afterwards."""
    name = buildah("from", "--pull=never", image)
    try:
        yield Container(name, Path(buildah("mount", name)))
    finally:
        buildah("umount", name)
        buildah("rm", name)


def run_arguments(
    container: Container, command: Sequence[str], env: Mapping[str, str], volumes: Mapping[Path, str]
) -> list[str]:
    """The ``buildah run`` command line: chroot isolation, the image's user and working folder."""
    options = [f"--env={k}={v}" for k, v in env.items()]
    options += [f"--volume={host}:{inside}" for host, inside in volumes.items()]
    return [*BUILDAH, "run", "--isolation", "chroot", *options, container.name, "--", *command]


def run(
    container: Container,
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    volumes: Mapping[Path, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the container to its end (bounded by ``timeout``)."""
    return subprocess.run(
        run_arguments(container, command, env or {}, volumes or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- processes ----------------------------------------------------------------------------------------------------


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid``, parents before children."""
    parents = {p: _parent(p) for p in (int(d) for d in os.listdir("/proc") if d.isdigit())}
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = sorted(p for p, parent in parents.items() if parent in frontier)
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not yet exited (zombies count as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def ids(pid: int) -> tuple[set[int], set[int]]:
    """The real, effective, saved and filesystem user ids and group ids of ``pid``."""
    lines = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {int(x) for x in lines["Uid"].split()}, {int(x) for x in lines["Gid"].split()}


@dataclass
class Stopped:
    exit_code: int
    seconds: float
    processes: list[int]
    """The command and its descendants when the signal was sent."""


@dataclass
class RunningCommand:
    """``buildah run`` of one long-running command, with the PID of that command inside the container."""

    process: subprocess.Popen[bytes]
    log: Path
    pid: int = field(default=0)

    def find_pid(self, seconds: float = 60.0) -> int:
        """The PID of the command itself: the child of ``buildah-chroot-exec`` below this ``buildah run``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for pid in descendants(self.process.pid):
                parent = _parent(pid)
                if parent is not None and _argv0(parent) == "buildah-chroot-exec":
                    self.pid = pid
                    return pid
            if self.process.poll() is not None:
                raise AssertionError(f"buildah run exited with {self.process.returncode}: {self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no process under buildah-chroot-exec within {seconds} s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, signum: signal.Signals, seconds: float) -> Stopped:
        """Send ``signum`` to the command (by its PID); wait, at most ``seconds``, for ``buildah run`` to end with the
        command's exit code."""
        processes = [self.pid, *descendants(self.pid)]
        start = time.monotonic()
        os.kill(self.pid, signum)
        try:
            code = self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"still running {seconds} s after {signum.name}: {self.log_tail()}") from exc
        return Stopped(code, time.monotonic() - start, processes)

    def kill(self) -> None:
        """End whatever is left, each process by its PID: the command and its children, then ``buildah run``."""
        if self.process.poll() is not None:
            return
        if self.pid:
            for pid in [self.pid, *descendants(self.pid)]:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@contextmanager
def started(
    container: Container, command: Sequence[str], env: Mapping[str, str], volumes: Mapping[Path, str], log: Path
) -> Iterator[RunningCommand]:
    """``command`` running in the container (output to ``log``); whatever is left of it is killed afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            run_arguments(container, command, env, volumes),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = RunningCommand(process, log)
    try:
        running.find_pid()
        yield running
    finally:
        running.kill()


# --- the root filesystem --------------------------------------------------------------------------------------------

Entry = tuple[int, int, int, int, int]


def snapshot(root: Path, skip: Sequence[str]) -> dict[str, Entry]:
    """Every path under ``root`` (relative, "/"-rooted) with its mode, size, mtime, uid and gid — except the
    folders in ``skip`` and everything below them."""
    skipped = {s.rstrip("/") for s in skip}
    entries: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        inside = "/" + os.path.relpath(folder, root).removeprefix(".").lstrip("/")
        dirs[:] = [d for d in dirs if f"{inside.rstrip('/')}/{d}" not in skipped]
        for name in [*dirs, *files]:
            path = f"{inside.rstrip('/')}/{name}"
            st = os.lstat(os.path.join(folder, name))
            entries[path] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
    return entries


def changes(before: Mapping[str, Entry], after: Mapping[str, Entry]) -> dict[str, str]:
    """What differs between two snapshots: path → "added", "removed" or "changed"."""
    result = dict.fromkeys(after.keys() - before.keys(), "added")
    result |= dict.fromkeys(before.keys() - after.keys(), "removed")
    result |= {p: "changed" for p in before.keys() & after.keys() if before[p] != after[p]}
    return result
