"""Deadlines, called directly (:class:`cds_service.fhir.client.Deadline` and :class:`FhirClient`, no app, no
server): one overall budget per call, each request's timeout ``min(per-request timeout, what is left)``, and nothing
requested once the budget is spent.

Time is an injected clock that only the test moves (a request "takes" time by advancing it), so every assertion is
on computed values, never on elapsed real time. Requests go to a recording transport mounted on the client's
session: nothing leaves the process.

Already covered elsewhere, end to end with real (short) sleeps, so not repeated here: a FHIR server slower than the
request timeout, and slow paging running out of the overall deadline, each giving 412 (tests/fhir/test_prefetch.py)."""

from __future__ import annotations

import inspect
import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import requests
from requests.adapters import BaseAdapter
from requests.models import PreparedRequest

from cds_service.fhir.client import FHIR_JSON, Deadline, FhirClient, FhirTimeout, new_session
from cds_service.settings import FhirSettings

BASE = "https://fhir.example.org/fhir"
PER_REQUEST = 2.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass(frozen=True)
class Answer:
    document: Any
    status: int = 200
    takes: float = 0.0
    """Seconds the request takes (the clock is advanced by this much before the answer is read)."""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    timeout: float
    at: float
    """The clock when the request was made."""


class Transport(BaseAdapter):
    """Answers each request with ``answer(method, url)``, advancing the clock by its ``takes``; records every
    request with the timeout it was given."""

    def __init__(self, clock: Clock, answer: Callable[[str, str], Answer]) -> None:
        super().__init__()
        self.clock = clock
        self.answer = answer
        self.sent: list[Sent] = []

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        assert isinstance(timeout, float | int), timeout
        method, url = request.method or "", request.url or ""
        self.sent.append(Sent(method, url, float(timeout), self.clock()))
        answer = self.answer(method, url)
        self.clock.advance(answer.takes)
        response = requests.Response()
        response.status_code = answer.status
        response.headers.update({"Content-Type": FHIR_JSON, **answer.headers})
        response.raw = io.BytesIO(orjson.dumps(answer.document) if answer.document is not None else b"")
        response.url = url
        response.request = request
        return response

    def close(self) -> None:
        pass


def bundle(next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "entry": [], "link": links}


def client_for(
    clock: Clock, answer: Callable[[str, str], Answer], deadline_seconds: float
) -> tuple[FhirClient, Transport]:
    """A client on a session whose https transport is the recording one, under a deadline on ``clock``."""
    transport = Transport(clock, answer)
    session = new_session()
    session.trust_env = False
    session.mount("https://", transport)
    shipped = FhirSettings()  # the page and size caps of config/default.toml
    client = FhirClient(
        session,
        BASE,
        token="access-token",
        deadline=Deadline(deadline_seconds, clock),
        request_timeout=PER_REQUEST,
        max_pages=shipped.max_pages,
        max_bytes=shipped.max_response_bytes,
    )
    return client, transport


def pages(count: int, takes: float) -> Callable[[str, str], Answer]:
    """Page ``n`` (``?page=n``) links to page ``n + 1`` up to ``count``; each request takes ``takes`` seconds."""

    def answer(method: str, url: str) -> Answer:
        number = int(url.rsplit("page=", 1)[1]) if "page=" in url else 1
        return Answer(bundle(f"{BASE}/Observation?page={number + 1}" if number < count else None), takes=takes)

    return answer


def never(method: str, url: str) -> Answer:
    raise AssertionError(f"no request may be made ({method} {url})")


# -- Deadline ------------------------------------------------------------------------------------------


def test_the_whole_budget_is_left_at_the_start() -> None:
    """A new Deadline of 4 s has 4 s left."""
    assert Deadline(4.0, Clock()).remaining() == 4.0


def test_what_is_left_decreases_as_the_clock_advances() -> None:
    """What is left falls by exactly the time that passed on the clock, from when the Deadline was made."""
    clock = Clock()
    deadline = Deadline(4.0, clock)
    left = []
    for step in (1.5, 2.0, 0.25):
        clock.advance(step)
        left.append(deadline.remaining())
    assert left == pytest.approx([2.5, 0.5, 0.25])


@pytest.mark.parametrize(
    ("elapsed", "timeout"),
    [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0), (2.5, 1.5), (3.9, 0.1)],
    ids=[
        "at the start",
        "more than a request left",
        "exactly a request left",
        "less than a request left",
        "nearly out",
    ],
)
def test_a_request_s_timeout_is_the_smaller_of_its_own_and_what_is_left(elapsed: float, timeout: float) -> None:
    """With a 4 s budget and a 2 s per-request timeout, a request gets 2 s while at least that much is left, then
    only what is left — never more than the remaining budget."""
    clock = Clock()
    deadline = Deadline(4.0, clock)
    clock.advance(elapsed)
    assert deadline.timeout(PER_REQUEST) == pytest.approx(timeout)
    assert deadline.timeout(PER_REQUEST) <= deadline.remaining()


@pytest.mark.parametrize("elapsed", [4.0, 4.5, 60.0], ids=["exactly at the end", "just after", "long after"])
def test_an_expired_deadline_gives_no_timeout_but_fhir_timeout(elapsed: float) -> None:
    """Once nothing is left (at the end or after it), asking for a request's timeout raises FhirTimeout naming the
    overall deadline — there is no zero or negative timeout to make a request with."""
    clock = Clock()
    deadline = Deadline(4.0, clock)
    clock.advance(elapsed)
    assert deadline.remaining() <= 0
    with pytest.raises(FhirTimeout, match="overall deadline"):
        deadline.timeout(PER_REQUEST)


def test_the_default_clock_is_the_monotonic_one() -> None:
    """Without a clock, a Deadline measures with time.monotonic (a wall-clock jump cannot lengthen or end it)."""
    assert inspect.signature(Deadline).parameters["clock"].default is time.monotonic


# -- the client under a deadline -----------------------------------------------------------------------


def test_every_page_s_timeout_is_capped_by_what_is_left_of_the_call_s_budget() -> None:
    """Paging three pages under a 2.5 s budget, each request taking 0.8 s: the timeouts are 2.0, 1.7 and 0.9 s —
    the per-request timeout while it fits, then what is left; none reaches past the call's deadline."""
    clock = Clock()
    start = clock()
    client, transport = client_for(clock, pages(3, takes=0.8), deadline_seconds=2.5)
    first = client.get("Observation?patient=123")
    assert len(client.follow_pages(first)) == 3
    assert [s.timeout for s in transport.sent] == pytest.approx([2.0, 1.7, 0.9])
    assert all(s.at + s.timeout <= start + 2.5 + 1e-9 for s in transport.sent)


def test_a_redirect_gets_what_is_left_not_a_fresh_timeout() -> None:
    """A redirect is followed under the same deadline: with a 3 s budget and 1.5 s spent on the first request, the
    redirected request gets 1.5 s, not another full per-request timeout."""

    def answer(method: str, url: str) -> Answer:
        if url == f"{BASE}/Patient/1":
            return Answer(None, status=307, takes=1.5, headers={"Location": f"{BASE}/moved/Patient/1"})
        return Answer({"resourceType": "Patient", "id": "1"})

    client, transport = client_for(Clock(), answer, deadline_seconds=3.0)
    assert client.get("Patient/1")["id"] == "1"
    assert [(s.url, s.timeout) for s in transport.sent] == [
        (f"{BASE}/Patient/1", 2.0),
        (f"{BASE}/moved/Patient/1", pytest.approx(1.5)),
    ]


def test_the_parallel_fallback_shares_the_call_s_budget() -> None:
    """When the server refuses the batch (404 after 1 s of a 2.5 s budget), each parallel GET gets what is left
    (1.5 s), not a fresh per-request timeout."""

    def answer(method: str, url: str) -> Answer:
        if method == "POST":
            return Answer({"resourceType": "OperationOutcome"}, status=404, takes=1.0)
        return Answer(bundle())

    client, transport = client_for(Clock(), answer, deadline_seconds=2.5)
    assert len(client.get_many(["Observation?code=a", "Condition?code=b"])) == 2
    assert [s.method for s in transport.sent].count("GET") == 2
    assert [s.timeout for s in transport.sent if s.method == "GET"] == pytest.approx([1.5, 1.5])


def test_an_answer_completed_after_the_deadline_is_not_used() -> None:
    """A request that was made in time but whose answer completes after the deadline (here 1.5 s of a 1 s
    budget) is a FhirTimeout, not a result."""
    client, transport = client_for(Clock(), lambda m, u: Answer(bundle(), takes=1.5), deadline_seconds=1.0)
    with pytest.raises(FhirTimeout, match="overall deadline"):
        client.get("Observation?patient=123")
    assert len(transport.sent) == 1


def test_an_expired_deadline_stops_paging_before_the_next_request() -> None:
    """Page 1 arrives in time; the caller's work then uses up the budget: asking for the following pages raises
    FhirTimeout and the next page is never requested."""
    clock = Clock()
    client, transport = client_for(clock, pages(5, takes=0.5), deadline_seconds=2.0)
    first = client.get("Observation?patient=123")
    clock.advance(1.5)
    with pytest.raises(FhirTimeout, match="overall deadline"):
        client.follow_pages(first)
    assert [s.url for s in transport.sent] == [f"{BASE}/Observation?patient=123"]
    assert client.requests_sent == 1


OPERATIONS: dict[str, Callable[[FhirClient], object]] = {
    "get": lambda c: c.get("Patient/1"),
    "get_many (batch)": lambda c: c.get_many(["Observation?code=a", "Condition?code=b"]),
    "next_page": lambda c: c.next_page(bundle(f"{BASE}/Observation?page=2")),
    "follow_pages": lambda c: c.follow_pages(bundle(f"{BASE}/Observation?page=2")),
}


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_an_expired_deadline_makes_no_request(operation: Callable[[FhirClient], object]) -> None:
    """With the budget already spent, every client operation raises FhirTimeout before anything is sent."""
    clock = Clock()
    client, transport = client_for(clock, never, deadline_seconds=1.0)
    clock.advance(1.0)
    with pytest.raises(FhirTimeout, match="overall deadline"):
        operation(client)
    assert (transport.sent, client.requests_sent) == ([], 0)
