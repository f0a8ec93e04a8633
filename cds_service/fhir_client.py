"""Outbound FHIR over HTTP: the only module that talks to a FHIR server.

Safety first: a ``fhirServer`` must be on the configured allowlist (and https unless http is explicitly
allowed) before any request is made; redirects and ``next`` links are followed only on the same origin;
responses are capped in size; every request runs under a per-request timeout and one overall deadline; the
access token is sent only to the allowed server and never logged, stored or echoed in an error.

Errors (one function, :meth:`FhirClient._send`, maps every HTTP outcome to them)::

    FhirError
    ├── FhirNotAllowed         not on the allowlist / plain http / another origin — no request was made
    ├── FhirTimeout            a request or the overall deadline ran out
    ├── FhirUnavailable        connection refused, DNS, TLS
    ├── FhirHttpError          a non-2xx answer (carries the status and the server's OperationOutcome)
    ├── FhirInvalidResponse    not JSON, not a FHIR resource, a batch-response that does not fit the batch
    └── FhirTooLarge           a response above the size cap, or more pages than allowed
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

DEFAULT_REQUEST_TIMEOUT = 2.0
"""Seconds for one FHIR request (connect + read), unless the settings say otherwise."""
FHIR_JSON = "application/fhir+json"
_BATCH_REFUSED = frozenset({400, 403, 404, 405, 415, 422, 501})
_MAX_REDIRECTS = 3
_POOL_SIZE = 16

Json = dict[str, Any]


class FhirError(Exception):
    """A FHIR request failed; the message is safe to show (no token, no patient data)."""


class FhirNotAllowed(FhirError):
    pass


class FhirTimeout(FhirError):
    pass


class FhirUnavailable(FhirError):
    pass


class FhirHttpError(FhirError):
    def __init__(self, message: str, status: int, outcome: Json | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class FhirInvalidResponse(FhirError):
    pass


class FhirTooLarge(FhirError):
    pass


# -- policy --------------------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _normalise_base(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class ServerPolicy:
    """Which FHIR servers the service may call: exact base URLs, or prefixes written with a trailing ``*``."""

    allowed: tuple[str, ...]
    allow_http: bool = False

    def check(self, base_url: str) -> str:
        """The normalised base URL, or :class:`FhirNotAllowed` (and no request is ever made)."""
        try:
            parts = urlsplit(base_url.strip())
            _ = parts.port  # raises on a malformed port
        except ValueError as exc:
            raise FhirNotAllowed("fhirServer is not a valid URL") from exc
        if parts.scheme.lower() not in ("https", "http") or not parts.hostname or parts.username or parts.password:
            raise FhirNotAllowed("fhirServer must be an http(s) URL without credentials")
        if parts.scheme.lower() == "http" and not self.allow_http:
            raise FhirNotAllowed("fhirServer must use https ([fhir] allow_http is false)")
        if parts.query or parts.fragment:
            raise FhirNotAllowed("fhirServer must not carry a query or fragment")
        base = _normalise_base(base_url)
        for entry in self.allowed:
            if entry.endswith("*"):
                prefix = _normalise_base(entry[:-1])
                if base == prefix or base.startswith(prefix + "/"):
                    return base
            elif base == _normalise_base(entry):
                return base
        raise FhirNotAllowed("fhirServer is not on this service's allowlist ([fhir] allowed_servers)")


class Deadline:
    """One overall time budget; each request gets ``min(per-request timeout, what is left)``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return self._end - self._clock()

    def timeout(self, per_request: float) -> float:
        left = self.remaining()
        if left <= 0:
            raise FhirTimeout("the overall deadline for FHIR requests ran out")
        return min(per_request, left)


# -- shared resources (one per worker process) ---------------------------------------------------------

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    """A thread pool for parallel requests, created lazily in the process that uses it (safe after fork)."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix="fhir"))
        return _pool[1]


def new_session() -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=_POOL_SIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({"Accept": FHIR_JSON, "User-Agent": "nxp2-cds"})
    return session


# -- the client ----------------------------------------------------------------------------------------


class FhirClient:
    """Requests to one FHIR server (already checked against the policy) for one hook call."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        *,
        token: str | None,
        deadline: Deadline,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_pages: int = 10,
        max_bytes: int = 20_000_000,
    ) -> None:
        self._session = session
        self.base = base_url.rstrip("/")
        self._origin = _origin(self.base)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._deadline = deadline
        self._timeout = request_timeout
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self.requests_sent = 0

    # -- public ----------------------------------------------------------------------------------------
    def get_many(self, relative_urls: Sequence[str]) -> list[Json]:
        """Each relative URL's resource (a Bundle for searches), in order: one batch round trip, or parallel GETs
        when the server refuses batch."""
        if not relative_urls:
            return []
        if len(relative_urls) == 1:
            return [self.get(relative_urls[0])]
        try:
            return self._batch(relative_urls)
        except FhirHttpError as exc:
            if exc.status not in _BATCH_REFUSED:
                raise
        futures = [_executor().submit(self.get, url) for url in relative_urls]
        return [f.result() for f in futures]

    def get(self, relative_or_absolute: str) -> Json:
        return self._send("GET", urljoin(self.base + "/", relative_or_absolute))

    @property
    def max_pages(self) -> int:
        """The most pages of one search this client reads (``[fhir] max_pages``)."""
        return self._max_pages

    def follow_pages(self, bundle: Json) -> list[Json]:
        """The Bundle and every page after it (``next`` links on this server's origin only)."""
        pages = [bundle]
        current = bundle
        while _next_link(current) is not None:
            if len(pages) >= self._max_pages:
                raise FhirTooLarge(f"more than {self._max_pages} pages of results")
            current = self.next_page(current)
            pages.append(current)
        return pages

    def next_page(self, bundle: Json) -> Json:
        """The page a Bundle's ``next`` link names (on this server's origin only); the caller checks that there
        is one (:func:`has_next_page`) and bounds how many it reads (:attr:`max_pages`)."""
        link = _next_link(bundle)
        if link is None:
            raise FhirInvalidResponse("the Bundle has no 'next' link")
        target = urljoin(self.base + "/", link)
        if _origin(target) != self._origin:
            raise FhirNotAllowed("a 'next' link points to another origin; not followed")
        page = self._send("GET", target)
        if page.get("resourceType") != "Bundle":
            raise FhirInvalidResponse("a 'next' page is not a Bundle")
        return page

    # -- internals -------------------------------------------------------------------------------------
    def _batch(self, relative_urls: Sequence[str]) -> list[Json]:
        body = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": url}} for url in relative_urls],
        }
        answer = self._send("POST", self.base, body)
        entries = answer.get("entry")
        if (
            answer.get("resourceType") != "Bundle"
            or not isinstance(entries, list)
            or len(entries) != len(relative_urls)
        ):
            raise FhirInvalidResponse("the batch response does not match the batch request")
        results: list[Json] = []
        for entry in entries:
            response = entry.get("response") if isinstance(entry, dict) else None
            status_text = str(response.get("status", "")) if isinstance(response, dict) else ""
            status = int(status_text.split(" ", 1)[0]) if status_text[:3].isdigit() else 0
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not 200 <= status < 300:
                outcome = response.get("outcome") if isinstance(response, dict) else None
                raise FhirHttpError(
                    f"the FHIR server answered {status or 'no status'} inside the batch",
                    status or 502,
                    outcome if isinstance(outcome, dict) else None,
                )
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise FhirInvalidResponse("a batch response entry holds no resource")
            results.append(resource)
        return results

    def _send(self, method: str, url: str, body: Json | None = None) -> Json:
        """The one place that performs a request and maps every outcome to a result or a :class:`FhirError`."""
        target = url
        for _ in range(_MAX_REDIRECTS + 1):
            if _origin(target) != self._origin:
                raise FhirNotAllowed("a redirect points to another origin; not followed")
            timeout = self._deadline.timeout(self._timeout)
            self.requests_sent += 1
            try:
                response = self._session.request(
                    method,
                    target,
                    data=orjson.dumps(body) if body is not None else None,
                    headers={**self._headers, **({"Content-Type": FHIR_JSON} if body is not None else {})},
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.Timeout as exc:
                raise FhirTimeout("the FHIR server did not answer in time") from exc
            except requests.RequestException as exc:
                raise FhirUnavailable("the FHIR server could not be reached") from exc
            with response:
                if response.is_redirect and method == "GET":
                    location = response.headers.get("Location", "")
                    target = urljoin(target, location)
                    continue
                content = self._read(response)
            return self._decode(response.status_code, content)
        raise FhirInvalidResponse("too many redirects")

    def _read(self, response: requests.Response) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise FhirTooLarge("the FHIR server's answer is larger than allowed")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > self._max_bytes:
                    raise FhirTooLarge("the FHIR server's answer is larger than allowed")
                if self._deadline.remaining() <= 0:
                    raise FhirTimeout("the overall deadline for FHIR requests ran out")
                chunks.append(chunk)
        except requests.Timeout as exc:
            raise FhirTimeout("the FHIR server did not answer in time") from exc
        except requests.RequestException as exc:
            raise FhirUnavailable("the connection to the FHIR server broke") from exc
        if self._deadline.remaining() <= 0:
            raise FhirTimeout("the overall deadline for FHIR requests ran out")
        return b"".join(chunks)

    @staticmethod
    def _decode(status: int, content: bytes) -> Json:
        try:
            document = orjson.loads(content) if content else None
        except orjson.JSONDecodeError:
            document = None
        if not 200 <= status < 300:
            outcome = (
                document if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome" else None
            )
            raise FhirHttpError(f"the FHIR server answered {status}", status, outcome)
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise FhirInvalidResponse("the FHIR server's answer is not a FHIR resource")
        return document


def _next_link(bundle: Json) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            url: str = link["url"]
            return url
    return None


def has_next_page(bundle: Json) -> bool:
    return bundle.get("resourceType") == "Bundle" and _next_link(bundle) is not None
