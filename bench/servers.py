"""Serve the service (with the bench's read-and-parse route beside it) the way ``nxp2-cds serve`` runs gunicorn:
its gunicorn settings, its shared Prometheus folder, its malloc arena limit and its RequestGuard in each worker.
``python -m bench.servers hook --port P [--workers N] [--threads N]``."""

from __future__ import annotations

import argparse
from typing import Any

from gunicorn.app.base import BaseApplication


class BenchServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, kind: str, options: dict[str, Any]) -> None:
        self.kind = kind
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

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
    from cds_service.server.supervisor import gunicorn_options, limit_malloc_arenas, prepare_metrics_directory

    prepare_metrics_directory()  # as `nxp2-cds serve`: before anything imports prometheus_client
    limit_malloc_arenas()
    BenchServer(args.kind, gunicorn_options("127.0.0.1", args.port, args.workers, args.threads)).run()


if __name__ == "__main__":
    main()
