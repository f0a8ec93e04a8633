"""Slow, half-sent and silent clients against `nxp2-cds serve` (nginx in front of two gunicorn workers, as the
manifest runs it): they hold no worker (no normal call ever waits as long as a hostile client's timeout, which is
what a call queued behind a held worker would wait), and each hostile connection is closed within the configured
timeout. Oversized chunked bodies get 413, and nginx's own errors are OperationOutcome JSON. Loopback only, bounded:
about 25 s. The p99 of normal traffic under slow clients is a benchmark (bench/front_door.py), not a timed assertion."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
import pytest

from bench import workload
from bench.loopback import LOOPBACK, SERVICE, Crowd, paced_calls
from tests.faults.front_door import outcome, post, require_nginx, run_threads
from tests.server_process import Served, running

HEADER_TIMEOUT = 3
BODY_TIMEOUT = 3
SLACK = 1.5  # nginx checks its timers at least this often, and the crowd notices a close within 50 ms
SETTINGS = {
    "NXP2_CDS_SERVER__HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "NXP2_CDS_SERVER__BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "NXP2_CDS_SERVER__THREADS": "4",
    "NXP2_CDS_LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_nginx()
    with running(tmp_path_factory.mktemp("front-door"), workers=2, settings=SETTINGS) as served:
        warm_up(served.port)
        yield served


def warm_up(port: int) -> None:
    """Hook calls from 8 clients at once first, so that every worker thread has answered some (the first calls of a
    process are slower)."""
    body = orjson.dumps(workload.request(100))

    def client(_: int) -> None:
        for _ in range(10):
            assert post(port, SERVICE, body)[0] == 200

    run_threads(client, 8, 60)


def test_hostile_clients_hold_no_worker_and_are_closed_in_time(
    server: Served, record_property: Callable[[str, object], None]
) -> None:
    """100 clients sending their headers at one byte a second, 20 that stop halfway through a body, 10 that send
    a body at one byte a second and 20 that send nothing — each reopened as soon as it is closed, for 12 s — while a
    normal client makes 300 hook calls at 40 a second: none fails and none waits as long as the header timeout (a
    call queued behind a worker held by a hostile client would wait that long; p50/p99 are reported); every
    slow-header and silent connection is closed within the header timeout, every half-sent body within the body
    timeout."""
    body = orjson.dumps(workload.request(100))
    crowd = Crowd(server.port, {"slow_header": 100, "half_body": 20, "slow_body": 10, "silent": 20}, seconds=12)
    crowd.start()
    try:
        time.sleep(1.0)  # all of them connected and started
        normal = paced_calls(server.port, body, count=300, rate=40)
    finally:
        crowd.stop()
    print(
        f"normal client under {crowd.opened_total} hostile connections: "
        f"p50 {normal.p50_ms:.1f} ms, p99 {normal.p99_ms:.1f} ms"
    )
    record_property("p99_ms_under_slow_clients", round(normal.p99_ms, 2))
    assert normal.failures == []
    assert max(normal.seconds) < HEADER_TIMEOUT - 0.5
    by_kind: dict[str, list[float]] = {}
    for hostile in crowd.finished:
        assert hostile.closed is not None
        since = hostile.opened if hostile.kind in ("slow_header", "silent") else hostile.last_sent
        by_kind.setdefault(hostile.kind, []).append(hostile.closed - since)
    assert len(by_kind["slow_header"]) >= 100
    assert len(by_kind["silent"]) >= 20
    assert len(by_kind["half_body"]) >= 20
    assert max(by_kind["slow_header"] + by_kind["silent"]) <= HEADER_TIMEOUT + SLACK
    assert min(by_kind["slow_header"] + by_kind["silent"]) >= HEADER_TIMEOUT - 0.5  # the timeout, not an error
    assert max(by_kind["half_body"]) <= BODY_TIMEOUT + SLACK
    assert "slow_body" not in by_kind  # a byte a second is within the body timeout: it only holds nginx


def chunked(size: int, chunk: int = 65536) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        piece = min(chunk, size - sent)
        yield b"%x\r\n" % piece + b" " * piece + b"\r\n"
        sent += piece
    yield b"0\r\n\r\n"


def raw_exchange(port: int, request: bytes, body: Iterable[bytes] = ()) -> bytes:
    """Send ``request`` (and ``body``, until the server stops reading); everything the server answers."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(request)
        try:
            for piece in body:
                sock.sendall(piece)
        except OSError:
            pass  # the server answered and closed before the end of the body
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


CHUNKED_HEAD = (
    f"POST {SERVICE} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
    "Transfer-Encoding: chunked\r\n\r\n"
).encode()


def test_an_oversized_chunked_body_gets_413_operation_outcome(server: Served) -> None:
    """A chunked body over max_body_bytes (10 MB) is refused with 413 and an OperationOutcome (too-long)."""
    status, headers, body = split(raw_exchange(server.port, CHUNKED_HEAD, chunked(12_000_000)))
    assert status == 413
    assert headers["content-type"] == "application/fhir+json"
    assert outcome(body)["issue"] == [
        {
            "severity": "error",
            "code": "too-long",
            "diagnostics": "The request body is larger than this service accepts.",
        }
    ]


def test_a_chunked_body_within_the_limit_is_served(server: Served) -> None:
    """A chunked hook call within the limit reaches the service whole (nginx buffers it and gives its length)."""
    document = orjson.dumps(workload.request(100))
    pieces = [
        b"%x\r\n" % len(document[i : i + 1000]) + document[i : i + 1000] + b"\r\n"
        for i in range(0, len(document), 1000)
    ]
    status, _, body = split(raw_exchange(server.port, CHUNKED_HEAD, [*pieces, b"0\r\n\r\n"]))
    assert status == 200, body[:300]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "invalid"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too-long"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431, "too-long"),
        (
            b"POST /cds-services/nxp2-jdm-risk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "not-supported",
        ),
        (b"POST /cds-services/nxp2-jdm-risk HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n", 413, "too-long"),
        (b"GET /healthz HTTP/2.7\r\nHost: x\r\n\r\n", 505, "not-supported"),
    ],
    ids=[
        "bad-request-line",
        "uri-too-long",
        "header-too-long",
        "unknown-transfer-encoding",
        "body-too-large",
        "http-version",
    ],
)
def test_the_front_doors_own_errors_are_operation_outcomes(
    server: Served, request_bytes: bytes, status: int, code: str
) -> None:
    """Errors nginx answers itself, before any worker sees the request, are FHIR OperationOutcome JSON."""
    answered, headers, body = split(raw_exchange(server.port, request_bytes))
    assert answered == status
    assert headers["content-type"] == "application/fhir+json"
    assert outcome(body)["issue"][0]["code"] == code  # type: ignore[index]


def test_gunicorn_alone_also_gives_413_for_an_oversized_chunked_body(tmp_path: Path) -> None:
    """Without nginx ([server] front_door = "gunicorn"), the workers' guard reads a chunked body up to
    max_body_bytes and answers 413 with an OperationOutcome for more (it used to be 400)."""
    settings = {"NXP2_CDS_SERVER__FRONT_DOOR": "gunicorn", "NXP2_CDS_MAX_BODY_BYTES": "1000000"}
    with running(tmp_path, workers=1, settings=settings) as served:
        status, headers, body = split(raw_exchange(served.port, CHUNKED_HEAD, chunked(3_000_000)))
        assert status == 413
        assert headers["content-type"] == "application/fhir+json"
        assert outcome(body)["issue"][0]["code"] == "too-long"  # type: ignore[index]
        small = orjson.dumps(workload.request(10))
        assert post(served.port, SERVICE, small)[0] == 200


def test_serve_refuses_an_open_address_without_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    """front_door = "auto" with no nginx installed: off loopback serve refuses to start (exit 2, one line naming the
    fix); front_door = "nginx" refuses anywhere."""
    from click.testing import CliRunner

    from cds_service.cli.main import main

    for name in [k for k in os.environ if k.startswith("NXP2_CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NXP2_CDS_AUTH__MODE", "disabled")
    monkeypatch.setenv("NXP2_CDS_PUBLIC_BASE_URL", "https://cds.example.org")
    monkeypatch.setenv("NXP2_CDS_SERVER__NGINX", "/nonexistent/nginx")
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "8099"])
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without nginx in front" in result.stderr
    monkeypatch.setenv("NXP2_CDS_SERVER__FRONT_DOOR", "nginx")
    result = CliRunner().invoke(main, ["serve", "--port", "8099"])
    assert result.exit_code == 2
    assert "'/nonexistent/nginx' is not installed" in result.stderr


def test_the_nginx_configuration_carries_the_settings(tmp_path: Path) -> None:
    """The generated nginx configuration holds the [server] timeouts and limits, max_body_bytes, the workers'
    socket, and an OperationOutcome for each of nginx's own errors."""
    from cds_service.server.supervisor import _NGINX_ERRORS, nginx_config
    from cds_service.settings import ServerSettings

    settings = ServerSettings(header_timeout_seconds=7, body_timeout_seconds=8, keepalive_seconds=9)
    text = nginx_config(
        "::1", 8443, tmp_path, settings, max_body_bytes=1234, unix_socket=tmp_path / "w.sock", secret="s3cret"
    )
    for line in (
        "listen [::1]:8443",
        "client_header_timeout 7s;",
        "client_body_timeout 8s;",
        "keepalive_timeout 9s;",
        "client_max_body_size 1234;",
        f"server unix:{tmp_path / 'w.sock'} max_fails=0;",
        'proxy_set_header X-Nxp2-Front-Door "s3cret $request_id";',
        "proxy_next_upstream error non_idempotent;",
        "proxy_next_upstream_tries 2;",
        f"worker_connections {settings.max_connections};",
        f"limit_conn active {settings.max_active_requests};",
    ):
        assert line in text
    for status in _NGINX_ERRORS:
        assert f"error_page {status} = " in text
    assert '"resourceType":"OperationOutcome"' in text
