"""Prometheus metrics, served at ``/metrics``.

An application's collectors belong to it: :class:`Metrics`, one per application (the Runtime holds it), with a
registry of its own, so two applications in one process count apart. That includes what is counted outside the
web layer on the application's behalf: the factory hands its ``Metrics`` to the store and the spooling recorder it
builds (database faults, replay fall-backs, the spool: :class:`~cds_service.telemetry.sinks.StoreMetrics`), and the
server hands it to the request guard in front of the application (refused requests). A store used without an
application (the command line) counts into :data:`~cds_service.telemetry.sinks.NULL_METRICS`, which drops the counts.

Under gunicorn every worker is its own process: ``nxp2-cds serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any
worker starts (and before prometheus_client is first imported: it chooses multiprocess mode at import), so each
worker writes its samples there and ``/metrics`` (answered by whichever worker) aggregates them all. In that mode the
samples are the process's files, not a registry's: one application per process, as gunicorn workers run. Without
that variable (tests, a single process) ``/metrics`` is the application's registry and the process's own collectors
(prometheus_client's default ``process_*`` and ``python_*``, which describe the process, not an application).

The metric names and labels are a public contract (dashboards). Labels never carry patient data: routes are URL
templates, outcomes and tiers come from the knowledge base.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_ENV):
    # prometheus_client refuses a multiprocess folder that does not exist yet (a fresh /tmp in a container, where
    # the image sets the variable for `serve` and every other command imports this module): create it, ours alone.
    os.makedirs(os.environ[MULTIPROC_ENV], mode=0o700, exist_ok=True)
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One application's collectors, in :attr:`registry` (its own). Built with the application's runtime."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "nxp2_cds_http_requests_total",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "nxp2_cds_http_request_duration_seconds",
            "Time to answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cards = Counter(
            "nxp2_cds_cards_issued_total", "Cards issued, by outcome and tier.", ["outcome", "tier"], registry=registry
        )
        self.decisions = Counter(
            "nxp2_cds_decisions_total",
            "Hook calls by what was decided (risk-cards, screening, notice-…, or why no card: anti-nxp2-negative, …).",
            ["decision"],
            registry=registry,
        )
        self.prefetch_keys = Counter(
            "nxp2_cds_prefetch_keys_total",
            "Prefetch keys by how their data was obtained.",
            ["source"],
            registry=registry,
        )
        self.fhir_calls = Counter(
            "nxp2_cds_fhir_fallback_calls_total",
            "Hook calls that fetched data from the FHIR server, by result.",
            ["result"],
            registry=registry,
        )
        self.fhir_requests = Counter(
            "nxp2_cds_fhir_requests_total", "HTTP requests sent to FHIR servers.", registry=registry
        )
        self.fhir_seconds = Histogram(
            "nxp2_cds_fhir_fallback_duration_seconds",
            "Time spent fetching from the FHIR server per hook call.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "nxp2_cds_auth_failures_total", "Refused client JWTs, by reason.", ["reason"], registry=registry
        )
        self.feedback = Counter(
            "nxp2_cds_feedback_total", "Feedback entries received, by outcome.", ["outcome"], registry=registry
        )
        self.feedback_duplicates = Counter(
            "nxp2_cds_feedback_duplicates_total", "Feedback entries already stored (repeats).", registry=registry
        )
        self.fhir_refused = Counter(
            "nxp2_cds_fhir_refused_total",
            "Outbound FHIR URLs refused before any request (so without the token), by reason: not-allowlisted, "
            "plain-http, credentials, unsafe-path, …, redirect-outside-base, next-outside-base, next-other-origin.",
            ["reason"],
            registry=registry,
        )
        self.jwks_fetch_failures = Counter(
            "nxp2_cds_jwks_fetch_failures_total",
            "JWKS documents that could not be fetched from an issuer's URL, by cause: network, status (not 200), "
            "too-large, not-a-jwk-set. Tokens refused for it count as "
            'nxp2_cds_auth_failures_total{reason="jwks-fetch-failed"}.',
            ["cause"],
            registry=registry,
        )
        # -- counted on the application's behalf by the server's request guard and by the store it was handed --
        self.requests_refused = Counter(
            "nxp2_cds_requests_refused_total",
            "Requests a worker refused before the application saw them, by reason: memory-budget (503), too-large "
            "(413).",
            ["reason"],
            registry=registry,
        )
        self.database_errors = Counter(
            "nxp2_cds_database_errors_total",
            "Database operations that failed because the database was down, hung, locked or out of connections, by "
            "operation (feedback, replay_check, issued_cards, readiness, probe) and reason (timeout or the exception "
            "class).",
            ["operation", "reason"],
            registry=registry,
        )
        self.replay_fallbacks = Counter(
            "nxp2_cds_jwt_replay_fallback_total",
            "JWT replay checks answered from the worker's memory because the database was unavailable.",
            registry=registry,
        )
        self.spool_pending = Gauge(
            "nxp2_cds_spool_pending_records",
            "Issued-card records in the spool not yet in the database (summed over live workers; a dead worker's "
            "records count again once another worker adopts its files).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.spool_records = Counter(
            "nxp2_cds_spool_records_total",
            "Issued-card records by what the spool did with them: spooled, written (to the database), dropped_full "
            "(beyond [database] spool_max_bytes), dropped_error (the spool could not be written), "
            "rejected (refused by the database one by one, or unreadable after a crash).",
            ["event"],
            registry=registry,
        )

    # -- the sinks of cds_service.telemetry.sinks: StoreMetrics (the store, the spool) and RefusalMetrics (the guard)

    def count_database_error(self, operation: str, reason: str) -> None:
        self.database_errors.labels(operation, reason).inc()

    def count_replay_fallback(self) -> None:
        self.replay_fallbacks.inc()

    def count_spool_records(self, event: str, records: int) -> None:
        self.spool_records.labels(event).inc(records)

    def set_spool_pending(self, records: int) -> None:
        self.spool_pending.set(records)

    def count_refused(self, reason: str) -> None:
        self.requests_refused.labels(reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type: all workers' samples when running under gunicorn (multiprocess
        mode), else this application's and the process's own (``process_*``, ``python_*``)."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(_Both(self.registry, REGISTRY)), CONTENT_TYPE_LATEST


class _Both(Collector):
    """Two registries read as one (their metric names are disjoint)."""

    def __init__(self, first: Collector, second: Collector) -> None:
        self._first = first
        self._second = second

    def collect(self) -> Iterable[Metric]:
        yield from self._first.collect()
        yield from self._second.collect()


def worker_exited(pid: int) -> None:
    """gunicorn's ``child_exit`` hook: forget a dead worker's live samples."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
