"""CDS client authentication: the JWT every CDS Hooks call carries (``Authorization: Bearer <JWT>``).

Checked, per CDS Hooks 2.0 and its best practices, before the body is read:

1. the header: ``alg`` in the allowed set (default ES384, RS384; never ``none`` or HMAC), ``kid``, ``typ: JWT``;
2. ``iss`` on the issuer allowlist;
3. the key: from the issuer's pinned JWK Set (``jwks_file`` or inline ``jwks``) whenever it has one — even when the
   token carries ``jku``, which must then still be on the issuer's allowlist but is never fetched (trust works
   offline) —, else its JWKS URL, or the token's ``jku`` only when that URL is on the issuer's allowlist; fetched JWKS
   documents are cached and re-fetched once when a ``kid`` is unknown (rotation); a fetch that fails (network error,
   non-200, not a JWK Set, too large) is refused as ``jwks-fetch-failed``, not ``unknown-kid``, and counted by cause
   in ``nxp2_cds_jwks_fetch_failures_total``;
4. the signature, ``aud`` equal to the URL being invoked, ``exp`` and ``iat`` (small leeway), ``nbf`` when present,
   and a lifetime no longer than allowed; ``exp``/``iat``/``nbf`` must be JSON numbers (not strings, booleans, NaN)
   inside the calendar, ``jti`` a short string, or the token is refused;
5. ``tenant`` when the issuer has a tenant allowlist;
6. ``jti`` not seen before within the token's lifetime (a store shared by every worker and instance) — except by the
   same front-door request: when a worker dies with a request in flight, ``nxp2-cds serve``'s nginx hands that same
   request to another worker, and the JWT it carries is then not a replay. The front door says which request it is
   in a header only it can write (:mod:`cds_service.web.front_door`).

Any failure is a 401 with ``WWW-Authenticate`` and no detail; the reason is logged (without the token).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
import orjson
import requests
import structlog
from jwt import PyJWK

from cds_service.errors import Unauthorized
from cds_service.settings import AuthSettings, IssuerSettings
from cds_service.telemetry.metrics import Metrics

log = structlog.get_logger("nxp2_cds.auth")

WWW_AUTHENTICATE = 'Bearer realm="nxp2-cds"'
MIN_REFETCH_INTERVAL_SECONDS = 10.0
"""An unknown ``kid`` forces a re-fetch of the JWKS at most this often (random kids cannot make the service hammer
the issuer)."""
MAX_JWKS_BYTES = 1_000_000
MAX_TOKEN_CHARS = 16_384
"""A CDS client JWT is well under 2 KB; a longer Authorization value is refused before it is decoded."""
MAX_JTI_CHARS = 512
MAX_TENANT_CHARS = 256
MAX_NUMERIC_DATE = 253_402_300_799
"""9999-12-31T23:59:59Z: ``exp``, ``iat`` and ``nbf`` beyond it (or before 1970) are not times this service reads."""


class ReplayStore(Protocol):
    def remember_jti(
        self, issuer: str, jti: str, expires_at: datetime, now: datetime, *, attempt: str | None = None
    ) -> bool: ...


class AuthFailure(Exception):
    """Why a token was refused (logged, never sent to the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ClientIdentity:
    """Who called (for logs and metrics): never the token itself."""

    issuer: str
    tenant: str | None
    jti: str


class JwksFetchFailed(Exception):
    """No JWK Set could be obtained from the URL (and none was cached): the key cannot be looked up at all."""


class JwksCache:
    """JWK Sets fetched from allowlisted URLs, cached for ``ttl`` seconds, re-fetched once on an unknown kid.

    :meth:`key` raises :class:`JwksFetchFailed` when the document is needed and cannot be fetched (a stale cached
    copy is used while the issuer is unreachable); every failed fetch is logged with its cause and counted."""

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: float,
        ttl: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, PyJWK]]] = {}
        self._forced: dict[str, float] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str) -> PyJWK | None:
        with self._lock:
            entry = self._entries.get(url)
        now = self._clock()
        if entry is None or now - entry[0] > self._ttl:
            entry = self._refresh(url) or entry
        if entry is None:
            raise JwksFetchFailed(url)
        if kid in entry[1]:
            return entry[1][kid]
        with self._lock:  # an unknown kid forces one re-fetch (key rotation), at most once per interval
            last = self._forced.get(url)
            if last is not None and now - last < MIN_REFETCH_INTERVAL_SECONDS:
                return None
            self._forced[url] = now
        refreshed = self._refresh(url)
        if refreshed is None:
            raise JwksFetchFailed(url)
        return refreshed[1].get(kid)

    def _refresh(self, url: str) -> tuple[float, dict[str, PyJWK]] | None:
        try:
            keys = _keys_by_kid(orjson.loads(self._fetch(url)))
        except _FetchFailure as failure:
            _fetch_failed(self._metrics, failure.cause, status=failure.status)
            return None
        except requests.RequestException as exc:
            _fetch_failed(self._metrics, "network", error=type(exc).__name__)
            return None
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            _fetch_failed(self._metrics, "not-a-jwk-set", error=type(exc).__name__)
            return None
        entry = (self._clock(), keys)
        with self._lock:
            self._entries[url] = entry
        return entry

    def _fetch(self, url: str) -> bytes:
        """The body of a 200 answer, read no further than :data:`MAX_JWKS_BYTES` (a huge or endless answer is
        abandoned, not buffered)."""
        with self._session.get(url, timeout=self._timeout, allow_redirects=False, stream=True) as response:
            if response.status_code != 200:
                raise _FetchFailure("status", response.status_code)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
                raise _FetchFailure("too-large", response.status_code)
            body = bytearray()
            for chunk in response.iter_content(chunk_size=65_536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise _FetchFailure("too-large", response.status_code)
            return bytes(body)


class _FetchFailure(Exception):
    def __init__(self, cause: str, status: int) -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status


def _fetch_failed(metrics: Metrics, cause: str, **fields: Any) -> None:
    """Log and count a failed JWKS fetch (``cause``: network, status, too-large, not-a-jwk-set); never the URL's
    answer itself."""
    log.warning("auth.jwks_fetch_failed", cause=cause, **fields)
    metrics.jwks_fetch_failures.labels(cause).inc()


def _keys_by_kid(document: Any) -> dict[str, PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    usable = [k for k in document["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)]
    keys: dict[str, PyJWK] = {}
    for jwk in usable:  # one key at a time: a malformed key (bad base64, wrong curve) is skipped, not fatal
        try:
            key = PyJWK.from_dict(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if key.key_id:
            keys[str(key.key_id)] = key
    return keys


def load_jwks_file(path: Path) -> dict[str, PyJWK]:
    """A static JWK Set from a file (read once at start-up)."""
    try:
        return _keys_by_kid(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JWK Set ({exc})") from exc


def pinned_keys(issuer: IssuerSettings) -> dict[str, PyJWK] | None:
    """The issuer's pinned JWK Set (``jwks_file`` or inline ``jwks``), or ``None`` when it has none."""
    if issuer.jwks_file is not None:
        return load_jwks_file(issuer.jwks_file)
    if issuer.jwks is not None:
        try:
            return _keys_by_kid(issuer.jwks)
        except ValueError as exc:
            raise ValueError(f"issuer {issuer.iss!r}: inline jwks is not a JWK Set ({exc})") from exc
    return None


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        replay_store: ReplayStore,
        session: requests.Session,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``metrics``: the application's, where refused tokens and failed JWKS fetches are counted."""
        self._settings = settings
        self._metrics = metrics
        self._issuers: Mapping[str, IssuerSettings] = {i.iss: i for i in settings.issuers}
        pinned = {i.iss: pinned_keys(i) for i in settings.issuers}
        self._static = {iss: keys for iss, keys in pinned.items() if keys is not None}
        self._algorithms = frozenset(settings.algorithms)
        self._replays = replay_store
        self._clock = clock
        self._jwks = JwksCache(
            session, timeout=settings.jwks_timeout_seconds, ttl=settings.jwks_cache_seconds, metrics=metrics
        )

    @property
    def required(self) -> bool:
        return self._settings.mode == "required"

    def authenticate(self, authorization: str | None, audience: str, *, attempt: str | None = None) -> ClientIdentity:
        """Verify the Authorization header for a call to ``audience``; raise :class:`Unauthorized` on any failure.
        ``attempt``: the front door's id of this request (``front_door.front_door_attempt``), under which a ``jti``
        already seen is this request handed on again, not a replay."""
        try:
            return self._verify(authorization, audience, attempt)
        except AuthFailure as failure:
            log.warning("auth.rejected", reason=failure.reason)
            self._metrics.auth_failures.labels(failure.reason).inc()
            raise Unauthorized("Authentication failed.", headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from None

    def _verify(self, authorization: str | None, audience: str, attempt: str | None = None) -> ClientIdentity:
        if not authorization:
            raise AuthFailure("missing-authorization")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailure("not-bearer")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthFailure("token-too-long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.InvalidTokenError, RecursionError):
            raise AuthFailure("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthFailure("algorithm-not-allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthFailure("no-kid")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise AuthFailure("typ-not-jwt")
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthFailure("issuer-not-allowed")
        key = self._key_for(issuer, header, kid)
        if key is None:
            raise AuthFailure("unknown-kid")
        if key.algorithm_name != alg:
            raise AuthFailure("key-algorithm-mismatch")
        leeway = self._settings.leeway_seconds
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer.iss,
                leeway=leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailure("expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailure("not-yet-valid") from None
        except jwt.InvalidAudienceError:
            raise AuthFailure("wrong-audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(f"missing-claim-{exc.claim}") from None
        except jwt.InvalidTokenError as exc:
            raise AuthFailure(f"invalid-{type(exc).__name__}") from None
        # pyjwt reads these with int(), so "1700000000" (a string), True or 1e308 pass its checks: the
        # arithmetic below needs real numbers inside the calendar.
        exp, iat = _numeric_date(claims, "exp"), _numeric_date(claims, "iat")
        if "nbf" in claims:
            _numeric_date(claims, "nbf")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS or not _utf8(jti):
            raise AuthFailure("bad-jti")
        if exp - iat > self._settings.max_token_lifetime_seconds:
            raise AuthFailure("lifetime-too-long")
        tenant = claims.get("tenant")
        if issuer.tenants is not None and not (isinstance(tenant, str) and tenant in issuer.tenants):
            raise AuthFailure("tenant-not-allowed")
        if not (isinstance(tenant, str) and len(tenant) <= MAX_TENANT_CHARS and _utf8(tenant)):
            tenant = None  # logged with every request: only a plain, short string
        now = self._clock()
        expires = datetime.fromtimestamp(exp + leeway, UTC)
        if not self._replays.remember_jti(issuer.iss, jti, expires, datetime.fromtimestamp(now, UTC), attempt=attempt):
            raise AuthFailure("replayed-jti")
        return ClientIdentity(issuer.iss, tenant, jti)

    def _key_for(self, issuer: IssuerSettings, header: Mapping[str, Any], kid: str) -> PyJWK | None:
        """The verification key: the pinned JWK Set whenever the issuer has one (a ``jku`` must still be on the
        allowlist, but is not fetched), else the allowlisted ``jku``, else the issuer's JWKS URL."""
        pinned = self._static.get(issuer.iss)
        jku = header.get("jku")
        if jku is not None and (
            not isinstance(jku, str) or (jku != issuer.jwks_url and jku not in issuer.jku_allowlist)
        ):
            raise AuthFailure("jku-not-allowed")
        if pinned is not None:
            return pinned.get(kid)
        url = jku if isinstance(jku, str) else issuer.jwks_url
        if not url:
            raise AuthFailure("no-key-source")
        try:
            return self._jwks.key(url, kid)
        except JwksFetchFailed:
            raise AuthFailure("jwks-fetch-failed") from None


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    """A NumericDate claim (RFC 7519: a JSON number of seconds) inside 1970..9999, else the token is refused."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthFailure(f"bad-claim-{name}")
    if not (math.isfinite(value) and 0 <= value <= MAX_NUMERIC_DATE):
        raise AuthFailure(f"bad-claim-{name}")
    return float(value)


def _utf8(text: str) -> bool:
    """Encodable (a JSON string may hold a lone surrogate; the replay key and the logs must not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
