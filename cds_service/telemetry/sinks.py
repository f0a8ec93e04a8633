"""What the store and the server's request guard count, as protocols, and a sink that counts nothing.

An application's :class:`~cds_service.telemetry.metrics.Metrics` implements them (its own registry); the factory
hands it to the store, the spooling recorder and the request guard it serves. Where there is no application — the
command line's ``migrate`` and ``feedback report``, a store built by a test — :data:`NULL_METRICS` takes the counts
and drops them. This module imports no prometheus_client: importing the store (and so the CLI) does not.
"""

from __future__ import annotations

from typing import Final, Protocol


class StoreMetrics(Protocol):
    """What the store counts: database faults, replay checks answered from memory, the spool's records."""

    def count_database_error(self, operation: str, reason: str) -> None:
        """``nxp2_cds_database_errors_total{operation, reason}`` + 1."""

    def count_replay_fallback(self) -> None:
        """``nxp2_cds_jwt_replay_fallback_total`` + 1."""

    def count_spool_records(self, event: str, records: int) -> None:
        """``nxp2_cds_spool_records_total{event}`` + ``records``."""

    def set_spool_pending(self, records: int) -> None:
        """``nxp2_cds_spool_pending_records`` = ``records``."""


class RefusalMetrics(Protocol):
    """What the server's request guard counts: requests refused before the application saw them."""

    def count_refused(self, reason: str) -> None:
        """``nxp2_cds_requests_refused_total{reason}`` + 1."""


class NullMetrics:
    """Counts nothing (a store or a guard without an application)."""

    def count_database_error(self, operation: str, reason: str) -> None:
        return None

    def count_replay_fallback(self) -> None:
        return None

    def count_spool_records(self, event: str, records: int) -> None:
        return None

    def set_spool_pending(self, records: int) -> None:
        return None

    def count_refused(self, reason: str) -> None:
        return None


NULL_METRICS: Final = NullMetrics()
