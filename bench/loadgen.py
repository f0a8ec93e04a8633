"""A load generator run as its own process (loopback only, bounded in time and count).

- ``closed``: ``concurrency`` connections send back to back for ``duration`` seconds (throughput);
- ``open``: requests are scheduled at a fixed ``rate`` for ``duration`` seconds and latency is measured from the
  scheduled time (no coordinated omission).

Prints one JSON object: requests, errors, seconds, throughput, p50/p99 latency in ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from bench.stats import percentile


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback only")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)


def _send(connection: http.client.HTTPConnection, path: str, method: str, body: bytes | None) -> int:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def closed(
    url: str, method: str, body: bytes | None, concurrency: int, duration: float, limit: int
) -> dict[str, object]:
    path = urlsplit(url).path
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        nonlocal errors
        connection = _connection(url)
        while time.monotonic() < stop:
            with lock:
                if len(latencies) + errors >= limit:
                    return
            start = time.perf_counter()
            try:
                status = _send(connection, path, method, body)
            except (OSError, http.client.HTTPException):
                connection = _connection(url)
                status = 0
            elapsed = time.perf_counter() - start
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors += 1

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began
    return _report(latencies, errors, seconds)


def open_loop(url: str, method: str, body: bytes | None, rate: float, duration: float) -> dict[str, object]:
    path = urlsplit(url).path
    total = int(rate * duration)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    local = threading.local()
    began = time.monotonic() + 0.2

    def one(index: int) -> None:
        nonlocal errors
        scheduled = began + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if not hasattr(local, "connection"):
            local.connection = _connection(url)
        try:
            status = _send(local.connection, path, method, body)
        except (OSError, http.client.HTTPException):
            local.connection = _connection(url)
            status = 0
        elapsed = time.monotonic() - scheduled
        with lock:
            if status == 200:
                latencies.append(elapsed)
            else:
                errors += 1

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(total)))
    seconds = time.monotonic() - began
    return _report(latencies, errors, seconds) | {"target_rate": rate}


def _report(latencies: list[float], errors: int, seconds: float) -> dict[str, object]:
    ms = [value * 1000 for value in latencies]
    return {
        "requests": len(ms),
        "errors": errors,
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(ms) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["closed", "open"])
    parser.add_argument("url")
    parser.add_argument("--body", help="file with the POST body (GET when absent)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=200_000)
    args = parser.parse_args()
    body = open(args.body, "rb").read() if args.body else None  # noqa: SIM115
    method = "POST" if body is not None else "GET"
    if args.mode == "closed":
        result = closed(args.url, method, body, args.concurrency, args.duration, args.limit)
    else:
        result = open_loop(args.url, method, body, args.rate, args.duration)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
