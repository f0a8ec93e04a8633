"""JWT ids this process accepted, kept in memory: asked before the database, and alone while it is unavailable."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime


class MemoryReplays:
    """JWT ids this process accepted (keys as in ``seen_jtis``), at most ``max_entries``, the oldest dropped first,
    each with the front door's id of the request that carried it (``attempt``, when there is a front door).

    Asked before the database (a replay this process saw needs no query), and alone while the database is
    unavailable; the ids accepted then are written to the database when it is back."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._expiry: OrderedDict[str, datetime] = OrderedDict()
        self._attempts: dict[str, str] = {}
        self._unsynced: OrderedDict[str, tuple[datetime, str | None]] = OrderedDict()
        self.evicted = 0
        """Unexpired ids dropped for room (their replays are caught by the database only)."""

    def __len__(self) -> int:
        return len(self._expiry)

    def replayed(self, key: str, now: datetime, attempt: str | None = None) -> bool:
        """``key`` is remembered, has not expired, and came with another request (a replay)."""
        with self._lock:
            expires = self._expiry.get(key)
            same = attempt is not None and self._attempts.get(key) == attempt
        return expires is not None and expires >= now and not same

    def add(
        self, key: str, expires: datetime, now: datetime, *, unsynced: bool = False, attempt: str | None = None
    ) -> bool:
        """Remember ``key``; False when it is already remembered, has not expired and came with another request
        (a replay)."""
        with self._lock:
            current = self._expiry.get(key)
            if current is not None and current >= now:
                return attempt is not None and self._attempts.get(key) == attempt
            self._expiry[key] = expires
            self._expiry.move_to_end(key)
            if attempt is None:
                self._attempts.pop(key, None)
            else:
                self._attempts[key] = attempt
            if unsynced:
                self._unsynced[key] = (expires, attempt)
                while len(self._unsynced) > self._max:
                    self._unsynced.popitem(last=False)
            self._trim(now)
            return True

    def _trim(self, now: datetime) -> None:
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires >= now and len(self._expiry) <= self._max:
                return
            del self._expiry[key]
            self._attempts.pop(key, None)
            if expires >= now:
                self.evicted += 1

    def unsynced(self, now: datetime) -> list[tuple[str, datetime, str | None]]:
        """Ids accepted while the database was unavailable and not yet written there (unexpired ones), with their
        attempts."""
        with self._lock:
            return [(k, e, a) for k, (e, a) in self._unsynced.items() if e >= now]

    def synced(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._unsynced.pop(key, None)
