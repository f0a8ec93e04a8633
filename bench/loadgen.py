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


class _Tally:
    """Latencies of successful requests and the count of failed ones, shared by the load threads."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self._lock = threading.Lock()

    def record(self, ok: bool, seconds: float) -> None:
        with self._lock:
            if ok:
                self.latencies.append(seconds)
            else:
                self.errors += 1

    @property
    def count(self) -> int:
        return len(self.latencies) + self.errors


class _Sender:
    """One keep-alive connection per thread; a broken connection is replaced and the request counted as failed."""

    def __init__(self, url: str, method: str, body: bytes | None) -> None:
        self.url, self.path, self.method, self.body = url, urlsplit(url).path, method, body
        self.local = threading.local()

    def send(self) -> bool:
        if not hasattr(self.local, "connection"):
            self.local.connection = _connection(self.url)
        try:
            return _send(self.local.connection, self.path, self.method, self.body) == 200
        except (OSError, http.client.HTTPException):
            self.local.connection = _connection(self.url)
            return False


def closed(
    url: str, method: str, body: bytes | None, concurrency: int, duration: float, limit: int
) -> dict[str, object]:
    tally, sender = _Tally(), _Sender(url, method, body)
    stop = time.monotonic() + duration

    def worker() -> None:
        while time.monotonic() < stop and tally.count < limit:
            start = time.perf_counter()
            ok = sender.send()
            tally.record(ok, time.perf_counter() - start)

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _report(tally.latencies, tally.errors, time.monotonic() - began)


def open_loop(url: str, method: str, body: bytes | None, rate: float, duration: float) -> dict[str, object]:
    tally, sender = _Tally(), _Sender(url, method, body)
    began = time.monotonic() + 0.2

    def one(index: int) -> None:
        scheduled = began + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ok = sender.send()
        tally.record(ok, time.monotonic() - scheduled)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(int(rate * duration))))
    return _report(tally.latencies, tally.errors, time.monotonic() - began) | {"target_rate": rate}


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
