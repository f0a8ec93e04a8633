"""Serve the service (with the bench's read-and-parse route beside it) the way ``nxp2-cds serve`` runs gunicorn:
its gunicorn settings, its shared Prometheus folder, its malloc arena limit and its RequestGuard in each worker.
``python -m bench.servers hook --port P [--workers N] [--threads N]``."""

from __future__ import annotations

import argparse
from typing import Any

from cds_service.server.supervisor import (
    ConfiguredApplication,
    gunicorn_options,
    limit_malloc_arenas,
    prepare_metrics_directory,
)


class BenchServer(ConfiguredApplication):
    def __init__(self, kind: str, options: dict[str, Any]) -> None:
        self.kind = kind
        super().__init__(options)

    def load(self) -> Any:
        from bench.apps import gunicorn_app

        return gunicorn_app(self.kind)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["hook"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    prepare_metrics_directory()  # as `nxp2-cds serve`: before anything imports prometheus_client
    limit_malloc_arenas()
    BenchServer(args.kind, gunicorn_options("127.0.0.1", args.port, args.workers, args.threads)).run()


if __name__ == "__main__":
    main()
