"""The background writer of issued-card records (the service uses its spooling subclass,
:mod:`cds_service.store.spool`)."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from cds_service.store.database import _track_forks
from cds_service.store.records import IssuedCard

logger = logging.getLogger(__name__)

# --- the background card writer ----------------------------------------------------------------------------------


class CardSink(Protocol):
    def record_cards(self, cards: Sequence[IssuedCard]) -> None: ...


@dataclass(eq=False)
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


_STOP: Final = object()


class CardRecorder:
    """Records issued cards off the hot path: :meth:`submit` only enqueues (bounded; when full the cards are
    dropped and counted), a daemon thread writes batches of up to ``batch_size`` cards, at least every
    ``flush_interval`` seconds while cards wait. The thread starts on the first submit in each process (so a
    recorder made before gunicorn forks works in every worker). :meth:`close` writes what is queued and stops it:
    whoever made the recorder calls it (for the application's own, ``close_app``, from gunicorn's ``worker_exit``);
    no exit hook is registered, so the recorder changes nothing process-wide.

    Counters (per process): ``written``, ``dropped`` (queue full, or after :meth:`close`), ``failed`` (their batch
    raised; logged by exception class only)."""

    def __init__(
        self,
        sink: CardSink,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("max_queue and batch_size must be positive, flush_interval > 0")
        self._sink = sink
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._closed = False
        self._reset()
        _track_forks(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[object] = queue.Queue(self._max_queue)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._written = 0
        self._dropped = 0
        self._failed = 0
        self._dropped_reported = 0

    def _after_fork_in_child(self) -> None:
        # The parent's queue, lock and thread are not ours: their locks may have been held at the fork.
        self._reset()

    @property
    def written(self) -> int:
        return self._written

    @property
    def pending(self) -> int:
        """Cards waiting to be written (about)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer thread now (the first submit starts it anyway); safe to call often."""
        if self._pid != os.getpid():
            self._reset()
        thread = self._thread
        if not self._closed and (thread is None or not thread.is_alive()):
            self._start()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def failed(self) -> int:
        return self._failed

    def submit(self, cards: Sequence[IssuedCard]) -> None:
        """Queue cards for writing; never blocks, never raises for a full queue or a stopped recorder."""
        if not cards:
            return
        if self._pid != os.getpid():
            self._reset()
        if self._closed:
            self._count_dropped(len(cards))
            return
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        put = self._queue.put_nowait
        for index, card in enumerate(cards):
            try:
                put(card)
            except queue.Full:
                self._count_dropped(len(cards) - index)
                return

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def _start(self) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="nxp2-cds-card-writer", daemon=True
            )
            self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every card submitted before this call is written (or failed). False on timeout."""
        if self._pid != os.getpid():
            self._reset()
        if self._thread is None:
            return True  # nothing was submitted in this process
        if not self._thread.is_alive():
            if self._closed:
                return self._queue.empty()
            self._start()
        deadline = time.monotonic() + timeout
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=max(0.0, timeout))
        except queue.Full:
            return False
        return marker.done.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread; later submits are dropped (and counted). Idempotent."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None or not thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(0.0, timeout))
        except queue.Full:
            return
        thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, source: queue.Queue[object]) -> None:
        batch: list[IssuedCard] = []
        deadline = 0.0
        while True:
            try:
                # with cards waiting, wake up in time to write them; with none, sleep until something comes
                item = source.get(timeout=max(0.0, deadline - time.monotonic())) if batch else source.get()
            except queue.Empty:
                self._write(batch)
                batch = []
                continue
            if isinstance(item, IssuedCard):
                if not batch:
                    deadline = time.monotonic() + self._flush_interval
                batch.append(item)
                if len(batch) >= self._batch_size:
                    self._write(batch)
                    batch = []
            elif isinstance(item, _Flush):
                self._write(batch)
                batch = []
                item.done.set()
            else:  # _STOP
                self._write(batch)
                return

    def _write(self, batch: list[IssuedCard]) -> None:
        if batch:
            try:
                self._sink.record_cards(batch)
            except Exception as exc:
                with self._lock:
                    self._failed += len(batch)
                logger.error("issued cards: a batch of %d could not be written (%s)", len(batch), type(exc).__name__)
            else:
                with self._lock:
                    self._written += len(batch)
        with self._lock:
            newly = self._dropped - self._dropped_reported
            self._dropped_reported = self._dropped
            total = self._dropped
        if newly:
            logger.warning("issued cards: queue full, %d dropped (%d since start)", newly, total)
