"""A bridge for tests that read samples from prometheus_client's process registry (``REGISTRY``) while the
application's collectors now live in each application's own registry (``runtime_of(app).metrics.registry``).

:data:`REGISTRY` answers ``get_sample_value`` summed over the process registry and the registry of every
application's :class:`~cds_service.telemetry.metrics.Metrics` built so far in this process (kept once seen, so a
sum never drops when an old application is garbage-collected). Deltas measured around one application's requests
are exact as long as no other application counts meanwhile (tests run one at a time). A test that has its app
should read ``runtime_of(app).metrics.registry`` instead; then this bridge can go.
"""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import CollectorRegistry

from cds_service.telemetry.metrics import Metrics


class _EveryRegistry:
    def __init__(self) -> None:
        self._seen: dict[int, CollectorRegistry] = {}

    def _registries(self) -> list[CollectorRegistry]:
        for candidate in gc.get_objects():
            if isinstance(candidate, Metrics):
                self._seen.setdefault(id(candidate.registry), candidate.registry)
        return [PROCESS_REGISTRY, *self._seen.values()]

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        values = [registry.get_sample_value(name, labels) for registry in self._registries()]
        found = [value for value in values if value is not None]
        return sum(found) if found else None


REGISTRY = _EveryRegistry()
