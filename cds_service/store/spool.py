"""A durable local spool for the records of the cards the service issues: none is lost to a database outage or to
the death of a worker (``kill -9`` included).

- **Appending (the hook's thread).** Each worker process appends its records, one JSON line per card and one
  ``write(2)`` per hook call, to its own *segment* file in the spool directory, ``cards-<pid>-<ns>-<n>.spool``, on
  which it holds an exclusive ``flock``. Once ``write`` returns the record is in the kernel: the process may die at
  any instant after it and the record survives. Nothing waits on the disk here (no ``fsync``).
- **Writing (the recorder's thread), every flush interval.** The open segment is sealed (a new one takes its place)
  and ``fsync``'d; the sealed segments are written to the database in batches with ``INSERT … ON CONFLICT DO
  NOTHING`` on the card's uuid (so writing a segment twice stores it once) and then deleted. While the database is
  unavailable the open segment is ``fsync``'d each interval and the writer retries with backoff (0.5 s up to 5 s).
- **Adopting.** The kernel drops a dead process's ``flock``: any other worker's writer takes over (locks) such a
  segment on its next scan (at start, then every 10 s) and writes it. The lock is what keeps two workers from
  writing the same file; a segment whose creator died before locking it is still named ``.tmp-…`` and ignored.
- **Bounded.** Each process keeps at most ``max_bytes`` of its own records waiting; records beyond it are dropped,
  counted (``nxp2_cds_spool_records_total{event="dropped_full"}``) and logged, never silently. What waits is the
  gauge ``nxp2_cds_spool_pending_records``.

The directory must be on a local disk (``flock`` over NFS is not to be trusted) that outlives the process: in a
container, a volume. Records carry what :class:`~cds_service.store.records.IssuedCard` keeps: no patient identifier.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from cds_service.store.database import AVAILABILITY_ERRORS, StoreError
from cds_service.store.recorder import CardRecorder, CardSink, _Flush
from cds_service.store.records import IssuedCard
from cds_service.store.store import Store
from cds_service.telemetry.sinks import NULL_METRICS, StoreMetrics

logger = logging.getLogger(__name__)

PREFIX: Final = "cards-"
SUFFIX: Final = ".spool"
TEMPORARY: Final = ".tmp-"
DIRECTORY_NAME: Final = "nxp2-cds-spool"
RECORD_VERSION: Final = 1
READ_CHUNK: Final = 1 << 20
SCAN_INTERVAL_S: Final = 10.0
MAX_BACKOFF_S: Final = 5.0
DROP_LOG_INTERVAL_S: Final = 10.0


@dataclass(eq=False)
class Segment:
    """One spool file, open and locked by this process."""

    path: Path
    fd: int
    records: int = 0
    size: int = 0
    dirty: bool = False
    """Appended to since the last fsync."""
    adopted: bool = False
    """Written by a process that died; not counted against this process's bound."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(line: bytes) -> IssuedCard | None:
    try:
        document = orjson.loads(line)
        if not isinstance(document, dict) or document.pop("v", None) != RECORD_VERSION:
            return None
        return IssuedCard.from_row(document)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class CardSpool:
    """This process's spool files in ``directory``. Thread-safe: :meth:`append` from any thread; the other methods
    from the recorder's writer thread only. Fork-safe: a child forgets (and does not unlock) the parent's files."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 8 << 20) -> None:
        if max_bytes < 1 or segment_bytes < 1:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._sequence = itertools.count(1)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._active: Segment | None = None
        self._sealed: list[Segment] = []
        self._own_bytes = 0

    def after_fork_in_child(self) -> None:
        # flock belongs to the open file, which the child shares: closing our copy keeps the parent's lock, while
        # LOCK_UN would release it.
        for segment in [self._active, *self._sealed]:
            if segment is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
        self._reset()

    def prepare(self) -> None:
        """Create the directory (mode 700) and check that files can be made in it; raises OSError."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=TEMPORARY + "probe-", dir=self.directory)
        os.close(fd)
        os.unlink(name)

    # -- what waits --

    @property
    def pending_records(self) -> int:
        with self._lock:
            return sum(s.records for s in self._segments())

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments())

    def _segments(self) -> list[Segment]:
        return [*self._sealed, *([self._active] if self._active is not None else [])]

    # -- the hook's thread --

    def append(self, data: bytes, records: int) -> bool:
        """Append ``data`` (``records`` complete JSON lines) in one write; False (nothing written) when it would take
        this process past ``max_bytes``. Raises OSError when the file cannot be written (nothing is left of it)."""
        if self._pid != os.getpid():
            self.after_fork_in_child()
        with self._lock:
            if self._own_bytes + len(data) > self.max_bytes:
                return False
            active = self._active
            if active is None:
                active = self._active = self._new_segment()
            try:
                _write_all(active.fd, data)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(active.fd, active.size)  # no torn line for the reader
                raise
            active.records += records
            active.size += len(data)
            active.dirty = True
            self._own_bytes += len(data)
        return True

    def _new_segment(self) -> Segment:
        name = f"{PREFIX}{os.getpid()}-{time.time_ns()}-{next(self._sequence)}{SUFFIX}"
        temporary = self.directory / f"{TEMPORARY}{name}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, self.directory / name)  # locked before anyone can see it under its real name
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        return Segment(self.directory / name, fd)

    # -- the writer's thread --

    def seal(self) -> None:
        """When the open segment holds records: give it a successor and fsync it (it is then only read)."""
        with self._lock:
            active = self._active
            if active is None or active.records == 0:
                return
        successor = self._new_segment()
        with self._lock:
            sealed, self._active = self._active, successor
            if sealed is not None:
                self._sealed.append(sealed)
        if sealed is not None:
            os.fsync(sealed.fd)
            sealed.dirty = False
        _fsync_directory(self.directory)

    def sync(self) -> None:
        """fsync the open segment if it was appended to since the last time (while the database is away)."""
        with self._lock:
            active = self._active
            if active is None or not active.dirty:
                return
            active.dirty = False
        os.fsync(active.fd)

    def sealed(self) -> list[Segment]:
        """The segments to write to the database, oldest first."""
        with self._lock:
            return list(self._sealed)

    def read(self, segment: Segment, batch_size: int) -> Iterator[tuple[list[IssuedCard], int]]:
        """The segment's records in batches, each with how many unreadable lines (torn by a crash) came before."""
        offset = 0
        rest = b""
        batch: list[IssuedCard] = []
        unreadable = 0
        while True:
            chunk = os.pread(segment.fd, READ_CHUNK, offset)
            if not chunk:
                break
            offset += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if not line:
                    continue
                card = _parse(line)
                if card is None:
                    unreadable += 1
                    continue
                batch.append(card)
                if len(batch) >= batch_size:
                    yield batch, unreadable
                    batch, unreadable = [], 0
        if rest:
            unreadable += 1  # a last line without its newline: torn
        if batch or unreadable:
            yield batch, unreadable

    def remove(self, segment: Segment) -> None:
        """Delete a segment written to the database."""
        try:
            segment.path.unlink(missing_ok=True)
        finally:
            os.close(segment.fd)
            with self._lock:
                if segment in self._sealed:
                    self._sealed.remove(segment)
                    if not segment.adopted:
                        self._own_bytes -= segment.size

    def adopt_orphans(self) -> int:
        """Take over the segments no live process holds (their process died); returns the records they hold."""
        with self._lock:
            own = {s.path.name for s in self._segments()}
        adopted = 0
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return 0
        for entry in entries:
            name = entry.name
            if name in own or not name.endswith(SUFFIX):
                continue
            if name.startswith(PREFIX):
                adopted += self._adopt(Path(entry.path))
            elif name.startswith(TEMPORARY + PREFIX):
                self._remove_stillborn(Path(entry.path))
        return adopted

    def _lock_orphan(self, path: Path) -> int | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # another worker may have written and deleted it between our open and our lock
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    def _adopt(self, path: Path) -> int:
        fd = self._lock_orphan(path)
        if fd is None:
            return 0
        segment = Segment(path, fd, size=os.fstat(fd).st_size, adopted=True)
        if segment.size == 0:
            path.unlink(missing_ok=True)
            os.close(fd)
            return 0
        offset = 0
        while chunk := os.pread(fd, READ_CHUNK, offset):
            segment.records += chunk.count(b"\n")
            offset += len(chunk)
        with self._lock:
            self._sealed.append(segment)
        logger.info("issued cards: adopted a spool file of %d records left by a process that stopped", segment.records)
        return segment.records

    def _remove_stillborn(self, path: Path) -> None:
        fd = self._lock_orphan(path)
        if fd is not None:  # its creator died between creating and naming it: it holds nothing
            path.unlink(missing_ok=True)
            os.close(fd)

    def close(self) -> None:
        """Close the files; an empty open segment is deleted, records still waiting stay for the next process."""
        with self._lock:
            segments = self._segments()
            active = self._active
            self._active = None
            self._sealed = []
            self._own_bytes = 0
        for segment in segments:
            try:
                if segment is active and segment.records == 0:
                    segment.path.unlink(missing_ok=True)
                elif segment.dirty:
                    os.fsync(segment.fd)
            finally:
                os.close(segment.fd)


_WAKE: Final = object()


@dataclass(eq=False)
class _SpoolFlush(_Flush):
    written: bool = False
    """Nothing submitted before the flush was still waiting afterwards."""


@dataclass
class _Outage:
    since: float
    error: str


class SpoolingCardRecorder(CardRecorder):
    """A :class:`~cds_service.store.recorder.CardRecorder` whose records go through a :class:`CardSpool`: :meth:`submit`
    appends them to this process's spool file (one write, no fsync) and returns; the writer thread writes sealed
    segments to the database, retrying while it is unavailable, and adopts the files of dead processes.

    Counters (per process): ``written`` (records this process wrote to the database, adopted ones included),
    ``dropped`` (beyond the spool's bound, an unwritable spool), ``failed`` (always 0: a failed
    write is retried), ``rejected`` (records the database refused one by one, or unreadable lines). ``metrics``
    counts the same events (``nxp2_cds_spool_records_total``) and what waits (``nxp2_cds_spool_pending_records``):
    the application's when its factory builds the recorder."""

    def __init__(
        self,
        sink: CardSink,
        spool: CardSpool,
        *,
        metrics: StoreMetrics = NULL_METRICS,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        scan_interval: float = SCAN_INTERVAL_S,
        max_backoff: float = MAX_BACKOFF_S,
    ) -> None:
        self._spool = spool
        self._metrics = metrics
        self._scan_interval = scan_interval
        self._max_backoff = max_backoff
        super().__init__(sink, max_queue=1000, batch_size=batch_size, flush_interval=flush_interval)

    def _reset(self) -> None:
        super()._reset()
        self._wake_pending = False
        self._rejected = 0
        self._outage: _Outage | None = None
        self._drops_unlogged = 0
        self._next_drop_log = 0.0

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._spool.after_fork_in_child()

    @property
    def spool(self) -> CardSpool:
        return self._spool

    @property
    def pending(self) -> int:
        """Records in this process's spool not yet in the database."""
        return self._spool.pending_records

    @property
    def rejected(self) -> int:
        return self._rejected

    # -- the hook's thread --

    def submit(self, cards: Sequence[IssuedCard]) -> None:
        """Append the cards' records to the spool (one write, never an fsync) and wake the writer; never raises.
        Records the spool cannot take are dropped, counted and logged."""
        if not cards:
            return
        if self._pid != os.getpid():
            self._after_fork_in_child()
        data = b"".join([orjson.dumps({"v": RECORD_VERSION, **card.to_row()}) + b"\n" for card in cards])
        try:
            spooled = self._spool.append(data, len(cards))
        except OSError as exc:
            self._drop(len(cards), "dropped_error", exc)
        else:
            if spooled:
                self._metrics.count_spool_records("spooled", len(cards))
            else:
                self._drop(len(cards), "dropped_full", None)
        if self._closed:  # a request that outlived close(): its records stay in the spool for the next process
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_WAKE)

    def _drop(self, n: int, event: str, error: OSError | None) -> None:
        self._metrics.count_spool_records(event, n)
        now = time.monotonic()
        with self._lock:
            self._dropped += n
            self._drops_unlogged += n
            if now < self._next_drop_log:
                return
            self._next_drop_log = now + DROP_LOG_INTERVAL_S
            count, self._drops_unlogged = self._drops_unlogged, 0
            total = self._dropped
        if event == "dropped_full":
            why = f"the spool holds this process's limit ([database] spool_max_bytes = {self._spool.max_bytes})"
        else:
            why = f"the spool cannot be written ({error.strerror if error is not None else 'error'})"
        logger.error("issued cards: %d records DROPPED: %s (%d since start)", count, why, total)

    # -- control --

    def start(self) -> None:
        """Start the writer now (it adopts what dead processes left); safe to call often."""
        if self._pid != os.getpid():
            self._after_fork_in_child()
        thread = self._thread
        if not self._closed and (thread is None or not thread.is_alive()):
            self._start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Try to write everything waiting now; True when nothing submitted before the call still waits (False while
        the database is unavailable, or on timeout)."""
        if self._pid != os.getpid():
            self._after_fork_in_child()
        thread = self._thread
        if thread is None or not thread.is_alive():
            if self._closed or (thread is None and self._spool.pending_records == 0):
                return self._spool.pending_records == 0  # nothing of this process's waits (a pre-fork parent)
            self._start()
        deadline = time.monotonic() + timeout
        marker = _SpoolFlush()
        try:
            self._queue.put(marker, timeout=max(0.0, timeout))
        except queue.Full:
            return False
        return marker.done.wait(max(0.0, deadline - time.monotonic())) and marker.written

    def close(self, timeout: float = 5.0) -> None:
        """Write what waits (if the database answers), stop the writer, close the files (what still waits stays on
        disk for the next process). A later submit (a request that outlived the close) is still appended to the spool,
        in a new file this process holds until it exits, and written by the next process: never dropped for being
        late. Idempotent."""
        super().close(timeout)
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._spool.close()

    # -- the writer's thread --

    def _run(self, source: queue.Queue[object]) -> None:
        spool = self._spool
        self._guarded(spool.adopt_orphans)
        now = time.monotonic()
        next_scan = now + self._scan_interval
        due: float | None = now  # write what an earlier process left, at once
        next_attempt = 0.0
        backoff = 0.0
        while True:
            now = time.monotonic()
            if due is None and spool.pending_records:
                due = now + self._flush_interval
            wake_at = next_scan if due is None else min(due, next_scan)
            try:
                item = source.get(timeout=max(0.0, wake_at - now))
            except queue.Empty:
                item = None
            if item is _WAKE:
                self._wake_pending = False
                continue
            flushes = [item] if isinstance(item, _SpoolFlush) else []
            stop = item is not None and not flushes
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + self._scan_interval
                if self._guarded(spool.adopt_orphans):
                    due = now
            if not (flushes or stop or (due is not None and now >= due)):
                continue
            if flushes or stop or now >= next_attempt:
                if self._write_spool():
                    backoff, next_attempt = 0.0, 0.0
                else:
                    backoff = min(max(backoff * 2, 0.5), self._max_backoff)
                    next_attempt = now + backoff
            else:
                self._guarded(spool.sync)
            due = None
            self._publish()
            for marker in flushes:
                marker.written = self._outage is None and spool.pending_records == 0
                marker.done.set()
            if stop:
                self._guarded(spool.close)
                self._publish()
                return

    def _guarded(self, step: Callable[[], int | None]) -> int:
        """Run a spool step; an OSError is logged (by class), not raised: the writer must go on."""
        try:
            result = step()
        except OSError as exc:
            logger.error("issued cards: spool %s failed (%s)", getattr(step, "__name__", "step"), type(exc).__name__)
            return 0
        return int(result or 0)

    def _publish(self) -> None:
        self._metrics.set_spool_pending(self._spool.pending_records)

    def _write_spool(self) -> bool:
        """Seal the open segment and write every sealed one to the database; False when the database failed."""
        spool = self._spool
        self._guarded(spool.seal)
        for segment in spool.sealed():
            written = rejected = 0
            try:
                for cards, unreadable in spool.read(segment, self._batch_size):
                    rejected += unreadable
                    if cards:
                        refused = self._write_batch(cards)
                        written += len(cards) - refused
                        rejected += refused
            except Exception as exc:
                self._note_failure(exc)
                return False
            try:
                spool.remove(segment)
            except OSError as exc:
                logger.error("issued cards: a written spool file could not be deleted (%s)", type(exc).__name__)
            with self._lock:
                self._written += written
                self._rejected += rejected
            self._metrics.count_spool_records("written", written)
            if rejected:
                self._metrics.count_spool_records("rejected", rejected)
                logger.error("issued cards: %d spooled records could not be stored and were dropped", rejected)
        self._note_recovery()
        return True

    def _write_batch(self, cards: list[IssuedCard]) -> int:
        """Write a batch; a record the database refuses (not an outage) is found one by one and left out. Returns
        how many were left out; raises for an unavailable database."""
        try:
            self._sink.record_cards(cards)
        except AVAILABILITY_ERRORS:
            raise
        except Exception:
            if len(cards) == 1:
                return 1
            return sum(self._write_batch([card]) for card in cards)
        return 0

    def _note_failure(self, error: Exception) -> None:
        if self._outage is not None:
            return
        self._outage = _Outage(time.monotonic(), type(error).__name__)
        logger.error(
            "issued cards: the database is unavailable (%s); records wait in the spool (%s) and are written when it "
            "returns",
            type(error).__name__,
            self._spool.directory,
        )

    def _note_recovery(self) -> None:
        outage = self._outage
        if outage is None:
            return
        self._outage = None
        logger.warning(
            "issued cards: the spool was written to the database after %.1f s of %s",
            time.monotonic() - outage.since,
            outage.error,
        )


def spool_directory(store: Store) -> Path:
    """``[database] spool_dir``, else ``nxp2-cds-spool`` beside the SQLite file, else in the working folder."""
    configured = store.settings.spool_dir
    if configured is not None:
        return configured.expanduser().absolute()
    if store.url.get_backend_name() == "sqlite":
        database = store.url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database).expanduser().absolute().parent / DIRECTORY_NAME
    return Path.cwd() / DIRECTORY_NAME


def spooling_recorder(store: Store, metrics: StoreMetrics | None = None) -> SpoolingCardRecorder:
    """The service's recorder: spooled in :func:`spool_directory`, bounded by ``[database] spool_max_bytes``, counted
    in ``metrics`` (by default the store's). Raises :class:`~cds_service.store.database.StoreError` when the directory
    cannot be used."""
    spool = CardSpool(spool_directory(store), max_bytes=store.settings.spool_max_bytes)
    try:
        spool.prepare()
    except OSError as exc:
        raise StoreError(f"[database] spool_dir {spool.directory}: {exc.strerror or exc}") from None
    return SpoolingCardRecorder(store, spool, metrics=store.metrics if metrics is None else metrics)
