"""Outbound FHIR over HTTP: the only module that talks to a FHIR server.

Safety first (:class:`ServerPolicy` decides, for every request): a ``fhirServer`` is normalised (dot segments,
``%2e``, repeated slashes, case, default port, IDNA; a backslash, credentials, a query or fragment, an encoded
slash or a path parameter is refused) and must be on the configured allowlist (and https unless http is explicitly
allowed) before any request is made; every request, redirect and ``next`` link of the call must stay under that
fhirServer's base path (not only its origin), so the access token is sent there only; responses are capped in
size; every request runs under a per-request timeout and one overall deadline; the token is never logged, stored
or echoed in an error.

Errors (one function, :meth:`FhirClient._send`, maps every HTTP outcome to them)::

    FhirError
    ├── FhirNotAllowed         not on the allowlist / plain http / outside the base path — no request was made
    ├── FhirTimeout            a request or the overall deadline ran out
    ├── FhirUnavailable        connection refused, DNS, TLS
    ├── FhirHttpError          a non-2xx answer (carries the status and the server's OperationOutcome)
    ├── FhirInvalidResponse    not JSON, not a FHIR resource, a batch-response that does not fit the batch
    └── FhirTooLarge           a response above the size cap, or more pages than allowed
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import idna
import orjson
import requests
import structlog
from requests.adapters import HTTPAdapter

FHIR_JSON = "application/fhir+json"
_BATCH_REFUSED = frozenset({400, 403, 404, 405, 415, 422, 501})
_MAX_REDIRECTS = 3
_POOL_SIZE = 16

Json = dict[str, Any]
_P = ParamSpec("_P")
_T = TypeVar("_T")


class FhirError(Exception):
    """A FHIR request failed; the message is safe to show (no token, no patient data)."""


class FhirNotAllowed(FhirError):
    def __init__(self, message: str, reason: str = "not-allowed") -> None:
        super().__init__(message)
        self.reason = reason
        """Why, as a short code (the metric label and the log's ``reason``)."""


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
#
# Every URL the service requests goes through ServerPolicy: a hook call's fhirServer (against the allowlist), then
# every request, redirect and ``next`` link of that call (under that fhirServer's base path). A URL is normalised
# first (scheme and host case, IDNA, default port, percent-encoded unreserved characters, dot segments, repeated
# slashes) and what was checked is exactly what is requested; what cannot be normalised safely is refused.

_DEFAULT_PORTS = {"https": 443, "http": 80}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%(..)?", re.S)
_HEX = frozenset("0123456789abcdefABCDEF")
_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_WHERE = {"fhirServer": "fhirServer", "request": "a request", "redirect": "a redirect", "next": "a 'next' link"}
log = structlog.get_logger("nxp2_cds.fhir")


class _Unsafe(Exception):
    """Why a URL cannot be normalised safely (internal: turned into :class:`FhirNotAllowed` by :func:`_checked`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class _Url:
    """A URL after normalisation."""

    scheme: str
    host: str
    """ASCII, lower case, IPv6 in brackets, no trailing dot."""
    port: int
    path: str
    """Absolute, no dot segments, no repeated slashes; a base has no trailing slash (empty at the root)."""
    query: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def url(self) -> str:
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.host}{port}{self.path}{query}"

    def under(self, base: _Url) -> bool:
        """On the base's origin, and its path is the base path or below it (whole segments: ``/fhir-admin`` is not
        under ``/fhir``)."""
        return self.origin == base.origin and (self.path == base.path or self.path.startswith(base.path + "/"))


def _normalise(url: str, *, base: bool = False) -> _Url:
    """``url`` normalised, or :class:`_Unsafe`. A ``base`` (a fhirServer, an allowlist entry) carries no query or
    fragment; any other URL loses its fragment (never sent anyway)."""
    text = url.strip(" \t\r\n")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise _Unsafe("invalid-url", "holds spaces or control characters")
    if "\\" in text:
        raise _Unsafe("unsafe-path", "holds a backslash")
    if base and ("?" in text or "#" in text):
        raise _Unsafe("query-or-fragment", "must not carry a query or fragment")
    try:
        parts = urlsplit(text)
        explicit_port = parts.port  # raises on a malformed port
    except ValueError:
        raise _Unsafe("invalid-url", "is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Unsafe("scheme", "must be an http(s) URL")
    if "@" in parts.netloc:
        raise _Unsafe("credentials", "must not carry credentials (user@host)")
    path = _path(_NON_ASCII.sub(lambda m: quote(m.group()), parts.path))
    return _Url(
        scheme,
        _host(parts.hostname or ""),
        _DEFAULT_PORTS[scheme] if explicit_port is None else explicit_port,
        path.rstrip("/") if base else path,
        _NON_ASCII.sub(lambda m: quote(m.group()), parts.query),
    )


def _host(raw: str) -> str:
    """The host as it will be resolved: IPv6 compressed, in brackets; a name in lower case, IDNA-encoded (UTS 46, as
    requests encodes it) and without a trailing dot."""
    if not raw or "%" in raw:
        raise _Unsafe("unsafe-host", "has no host, or an encoded one")
    if ":" in raw:
        try:
            return f"[{ipaddress.IPv6Address(raw).compressed}]"
        except ValueError:
            raise _Unsafe("unsafe-host", "has an invalid IPv6 address") from None
    name = raw.removesuffix(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise _Unsafe("unsafe-host", "has a host name that cannot be IDNA-encoded") from None
    name = name.lower()
    if not _HOST.match(name):
        raise _Unsafe("unsafe-host", "has an invalid host name")
    return name


def _path(raw: str) -> str:
    """The path with percent-encoded unreserved characters decoded (``%2e`` is a dot), then dot segments removed and
    repeated slashes collapsed. Refused: an encoded ``/``, ``\\``, ``%``, ``;`` or control character and a path
    parameter (``..;/``): servers and proxies disagree about what they mean."""

    def decode(match: re.Match[str]) -> str:
        digits = match.group(1)
        if digits is None or not set(digits) <= _HEX:
            raise _Unsafe("invalid-url", "has a malformed percent-encoding")
        char = chr(int(digits, 16))
        if char in _UNRESERVED:
            return char
        if char in "/\\%;" or ord(char) < 0x20 or ord(char) == 0x7F:
            raise _Unsafe("unsafe-path", "has an encoded '/', '\\', '%', ';' or control character in its path")
        return "%" + digits.upper()

    decoded = _PERCENT.sub(decode, raw)
    if ";" in decoded:
        raise _Unsafe("unsafe-path", "has a path parameter (';') in its path")
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    path = "/" + "/".join(segments)
    trailing = decoded.endswith("/") or decoded.rsplit("/", 1)[-1] in (".", "..")
    return path + "/" if trailing and segments else path


def _refused(reason: str, message: str, where: str) -> FhirNotAllowed:
    """Log a refusal: the reason and where, never the URL (it may name the patient). The prefetch counts it, in the
    application's metrics: this module stays free of metrics (the mappings survey of the command line uses it too)."""
    log.warning("fhir_url_refused", reason=reason, where=where)
    return FhirNotAllowed(message, reason)


def _checked(url: str, where: str, *, base: bool = False) -> _Url:
    try:
        return _normalise(url, base=base)
    except _Unsafe as exc:
        suffix = "" if where == "fhirServer" else "; not followed"
        raise _refused(exc.reason, f"{_WHERE[where]} {exc}{suffix}", where) from None


@dataclass(frozen=True)
class ServerPolicy:
    """Which FHIR servers the service may call (exact base URLs, or prefixes written with a trailing ``*``) and,
    within one call, which URLs are under the fhirServer it was allowed for. The one place that decides where a
    request — and so the token — may go."""

    allowed: tuple[str, ...]
    allow_http: bool
    """``[fhir] allow_http``: plain-http servers may be called (test servers only)."""

    @cached_property
    def _entries(self) -> tuple[tuple[_Url, bool], ...]:
        """The allowlist normalised as fhirServer values are (an entry that cannot be admits nothing)."""
        entries: list[tuple[_Url, bool]] = []
        for entry in self.allowed:
            prefix = entry.endswith("*")
            try:
                entries.append((_normalise(entry[:-1] if prefix else entry, base=True), prefix))
            except _Unsafe:
                continue
        return tuple(entries)

    def check(self, base_url: str) -> str:
        """The normalised base URL, or :class:`FhirNotAllowed` (and no request is ever made)."""
        base = _checked(base_url, "fhirServer", base=True)
        if base.scheme == "http" and not self.allow_http:
            raise _refused("plain-http", "fhirServer must use https ([fhir] allow_http is false)", "fhirServer")
        if any(base == entry or (prefix and base.under(entry)) for entry, prefix in self._entries):
            return base.url
        raise _refused(
            "not-allowlisted", "fhirServer is not on this service's allowlist ([fhir] allowed_servers)", "fhirServer"
        )

    @staticmethod
    def admit(base_url: str, url: str, where: str = "request") -> str:
        """``url`` (absolute, or relative to ``base_url``) normalised — what is then requested, with the token — when
        it is under ``base_url``, the fhirServer the call was allowed for; else :class:`FhirNotAllowed`. ``where``:
        ``request``, ``redirect`` or ``next`` (the log and metric reason say which)."""
        base = _checked(base_url, "fhirServer", base=True)
        try:
            joined = urljoin(base.url + "/", url)
        except ValueError:  # a host part urllib cannot split (an unclosed IPv6 bracket, NFKC-invalid characters)
            raise _refused("invalid-url", f"{_WHERE[where]} is not a valid URL; not followed", where) from None
        target = _checked(joined, where)
        if target.origin != base.origin:
            raise _refused(f"{where}-other-origin", f"{_WHERE[where]} points to another origin; not followed", where)
        if not target.under(base):
            raise _refused(
                f"{where}-outside-base",
                f"{_WHERE[where]} points outside the fhirServer's base path; not followed",
                where,
            )
        return target.url


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


# -- shared resources (one per application: the Runtime owns them) -----------------------------------


class FetchPool(Executor):
    """The threads on which an application's clients send parallel GETs (when a FHIR server refuses a batch). Made
    with the application's runtime and shut down with it (:meth:`shutdown`); never shared between applications.

    Its threads are started in the process that first uses it, and again in a child after a fork (threads do not
    survive a fork), so a pool made before gunicorn forks works in every worker. Once shut down it refuses work
    (:class:`RuntimeError`, as any executor)."""

    def __init__(self, size: int = _POOL_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._shut = False

    @property
    def is_shut_down(self) -> bool:
        return self._shut

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        return self._current().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work and stop the threads (waiting for the requests in flight when ``wait``). Idempotent."""
        with self._lock:
            self._shut = True
            executor, self._executor = self._executor, None
            ours = self._pid == os.getpid()
        if executor is not None and ours:  # a parent's executor, inherited by a fork, has no threads here
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _current(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._shut:
                raise RuntimeError("the FHIR fetch pool is shut down")
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(max_workers=self._size, thread_name_prefix="fhir")
                self._pid = os.getpid()
            return self._executor


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
        request_timeout: float,
        max_pages: int,
        max_bytes: int,
        pool: Executor | None = None,
    ) -> None:
        """``request_timeout``: seconds for one request (``[fhir] request_timeout_seconds``), within ``deadline``.
        ``max_pages``: the most pages of one search (``[fhir] max_pages``); ``max_bytes``: the largest response body
        (``[fhir] max_response_bytes``). No defaults here: the values come from the settings (``config/``).
        ``pool``: where parallel GETs run when the server refuses a batch (the runtime's :class:`FetchPool`);
        without one they are sent one after another."""
        self._session = session
        self.base = base_url.rstrip("/")
        """The fhirServer the call was allowed for: every request must stay under it (:meth:`ServerPolicy.admit`)."""
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._deadline = deadline
        self._timeout = request_timeout
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self._pool = pool
        self.requests_sent = 0

    # -- public ----------------------------------------------------------------------------------------
    def get_many(self, relative_urls: Sequence[str]) -> list[Json]:
        """Each relative URL's resource (a Bundle for searches), in order: one batch round trip, or GETs (parallel,
        on the client's pool) when the server refuses batch."""
        if not relative_urls:
            return []
        if len(relative_urls) == 1:
            return [self.get(relative_urls[0])]
        try:
            return self._batch(relative_urls)
        except FhirHttpError as exc:
            if exc.status not in _BATCH_REFUSED:
                raise
        if self._pool is None:
            return [self.get(url) for url in relative_urls]
        futures = [self._pool.submit(self.get, url) for url in relative_urls]
        return [f.result() for f in futures]

    def get(self, relative_or_absolute: str) -> Json:
        return self._send("GET", relative_or_absolute)

    @property
    def max_pages(self) -> int:
        """The most pages of one search this client reads (``[fhir] max_pages``)."""
        return self._max_pages

    def follow_pages(self, bundle: Json) -> list[Json]:
        """The Bundle and every page after it (``next`` links under this server's base path only)."""
        pages = [bundle]
        current = bundle
        while _next_link(current) is not None:
            if len(pages) >= self._max_pages:
                raise FhirTooLarge(f"more than {self._max_pages} pages of results")
            current = self.next_page(current)
            pages.append(current)
        return pages

    def next_page(self, bundle: Json) -> Json:
        """The page a Bundle's ``next`` link names (under this server's base path only); the caller checks that
        there is one (:func:`has_next_page`) and bounds how many it reads (:attr:`max_pages`)."""
        link = _next_link(bundle)
        if link is None:
            raise FhirInvalidResponse("the Bundle has no 'next' link")
        page = self._send("GET", link, where="next")
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

    def _send(self, method: str, url: str, body: Json | None = None, where: str = "request") -> Json:
        """The one place that performs a request and maps every outcome to a result or a :class:`FhirError`. The
        URL, and every redirect after it, is admitted by :meth:`ServerPolicy.admit` before it is requested."""
        target = url
        for _ in range(_MAX_REDIRECTS + 1):
            target = ServerPolicy.admit(self.base, target, where)
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
                    target = urljoin(target, response.headers.get("Location", ""))
                    where = "redirect"
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
