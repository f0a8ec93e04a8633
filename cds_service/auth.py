"""CDS client authentication: the JWT every CDS Hooks call carries (``Authorization: Bearer <JWT>``).

Checked, per CDS Hooks 2.0 and its best practices, before the body is read:

1. the header: ``alg`` in the allowed set (default ES384, RS384; never ``none`` or HMAC), ``kid``, ``typ: JWT``;
2. ``iss`` on the issuer allowlist;
3. the key: from the issuer's static JWKS file, or its JWKS URL, or the token's ``jku`` only when that URL is on
   the issuer's allowlist; JWKS documents are cached and re-fetched once when a ``kid`` is unknown (rotation);
4. the signature, ``aud`` equal to the URL being invoked, ``exp`` and ``iat`` (small leeway), ``nbf`` when present,
   and a lifetime no longer than allowed;
5. ``tenant`` when the issuer has a tenant allowlist;
6. ``jti`` not seen before within the token's lifetime (a store shared by every worker and instance).

Any failure is a 401 with ``WWW-Authenticate`` and no detail; the reason is logged (without the token).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
import requests
import structlog
from jwt import PyJWK, PyJWKSet

from . import metrics
from .errors import Unauthorized
from .settings import AuthSettings, IssuerSettings

log = structlog.get_logger("nxp2_cds.auth")

WWW_AUTHENTICATE = 'Bearer realm="nxp2-cds"'
MIN_REFETCH_INTERVAL_SECONDS = 10.0
"""An unknown ``kid`` forces a re-fetch of the JWKS at most this often (random kids cannot make the service hammer
the issuer)."""
MAX_JWKS_BYTES = 1_000_000


class ReplayStore(Protocol):
    def remember_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool: ...


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


class JwksCache:
    """JWK Sets fetched from allowlisted URLs, cached for ``ttl`` seconds, re-fetched once on an unknown kid."""

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: float,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
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
        if entry is not None and kid in entry[1]:
            return entry[1][kid]
        with self._lock:  # an unknown kid forces one re-fetch (key rotation), at most once per interval
            last = self._forced.get(url)
            if last is not None and now - last < MIN_REFETCH_INTERVAL_SECONDS:
                return None
            self._forced[url] = now
        refreshed = self._refresh(url)
        return refreshed[1].get(kid) if refreshed is not None else None

    def _refresh(self, url: str) -> tuple[float, dict[str, PyJWK]] | None:
        try:
            response = self._session.get(url, timeout=self._timeout, allow_redirects=False)
            if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
                log.warning("auth.jwks_fetch_failed", status=response.status_code)
                return None
            keys = _keys_by_kid(response.json())
        except (requests.RequestException, ValueError) as exc:
            log.warning("auth.jwks_fetch_failed", error=type(exc).__name__)
            return None
        entry = (self._clock(), keys)
        with self._lock:
            self._entries[url] = entry
        return entry


def _keys_by_kid(document: Any) -> dict[str, PyJWK]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    usable = [k for k in document["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)]
    try:
        key_set = PyJWKSet.from_dict({"keys": usable})
    except jwt.PyJWKSetError:
        return {}
    return {str(key.key_id): key for key in key_set.keys if key.key_id}


def load_jwks_file(path: Path) -> dict[str, PyJWK]:
    """A static JWK Set from a file (read once at start-up)."""
    try:
        return _keys_by_kid(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JWK Set ({exc})") from exc


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        replay_store: ReplayStore,
        session: requests.Session,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._issuers: Mapping[str, IssuerSettings] = {i.iss: i for i in settings.issuers}
        self._static = {i.iss: load_jwks_file(i.jwks_file) for i in settings.issuers if i.jwks_file is not None}
        self._algorithms = frozenset(settings.algorithms)
        self._replays = replay_store
        self._clock = clock
        self._jwks = JwksCache(session, timeout=settings.jwks_timeout_seconds, ttl=settings.jwks_cache_seconds)

    @property
    def required(self) -> bool:
        return self._settings.mode == "required"

    def authenticate(self, authorization: str | None, audience: str) -> ClientIdentity:
        """Verify the Authorization header for a call to ``audience``; raise :class:`Unauthorized` on any failure."""
        try:
            return self._verify(authorization, audience)
        except AuthFailure as failure:
            log.warning("auth.rejected", reason=failure.reason)
            metrics.AUTH_FAILURES.labels(failure.reason).inc()
            raise Unauthorized("Authentication failed.", headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from None

    def _verify(self, authorization: str | None, audience: str) -> ClientIdentity:
        if not authorization:
            raise AuthFailure("missing-authorization")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailure("not-bearer")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise AuthFailure("malformed") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
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
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise AuthFailure("bad-jti")
        if exp - iat > self._settings.max_token_lifetime_seconds:
            raise AuthFailure("lifetime-too-long")
        tenant = claims.get("tenant")
        if issuer.tenants is not None and tenant not in issuer.tenants:
            raise AuthFailure("tenant-not-allowed")
        now = self._clock()
        expires = datetime.fromtimestamp(exp + leeway, UTC)
        if not self._replays.remember_jti(issuer.iss, jti, expires, datetime.fromtimestamp(now, UTC)):
            raise AuthFailure("replayed-jti")
        return ClientIdentity(issuer.iss, tenant if isinstance(tenant, str) else None, jti)

    def _key_for(self, issuer: IssuerSettings, header: Mapping[str, Any], kid: str) -> PyJWK | None:
        jku = header.get("jku")
        if jku is not None:
            if not isinstance(jku, str) or (jku != issuer.jwks_url and jku not in issuer.jku_allowlist):
                raise AuthFailure("jku-not-allowed")
            return self._jwks.key(jku, kid)
        if issuer.iss in self._static:
            return self._static[issuer.iss].get(kid)
        if issuer.jwks_url:
            return self._jwks.key(issuer.jwks_url, kid)
        raise AuthFailure("no-key-source")
