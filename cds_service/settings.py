"""Typed settings, layered (later wins):

1. ``config/default.toml`` (shipped),
2. the TOML file named by ``NXP2_CDS_CONFIG``,
3. ``NXP2_CDS_*`` environment variables (nested keys with ``__``: ``NXP2_CDS_FHIR__ALLOW_HTTP=true``),
4. keyword overrides (tests, the command line).

Every default value is in ``config/default.toml`` (keys that default to "not set" stand there as commented lines);
the models below declare types and bounds only. A section built in code from some keys
(``DatabaseSettings(statement_timeout_seconds=1.0)``) gets the shipped values for the others.

Validated at start-up: a bad value stops the service with a message that names the key.
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cds_service.resources import config_path

CONFIG_ENV = "NXP2_CDS_CONFIG"


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for messages)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"


class SettingsError(ValueError):
    """The configuration is invalid; the message names the key."""


DEFAULTS_FILE = "default.toml"


@cache
def shipped_defaults() -> dict[str, Any]:
    """The shipped ``config/default.toml``, read once."""
    with config_path(DEFAULTS_FILE).open("rb") as file:
        return tomllib.load(file)


class _Section(BaseModel):
    """A table of the settings. The keys not given take their values from the table ``TABLE`` of the shipped
    ``config/default.toml`` (the one source of the defaults), whether the section is built from the layered files
    or in code from keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TABLE: ClassVar[str | None] = None
    """This section's table in config/default.toml (``None``: no shipped table, e.g. an issuer). Its subclasses tell
    mypy (whose pydantic plugin would otherwise require every key without a default) that no key is required."""

    @model_validator(mode="before")
    @classmethod
    def _shipped_for_missing_keys(cls, data: Any) -> Any:
        if cls.TABLE is None or not isinstance(data, dict):
            return data  # an instance is already complete; anything else is refused by the model itself
        return shipped_defaults()[cls.TABLE] | data


ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


class IssuerSettings(_Section):
    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks_file: Path | None = None
    """A pinned JWK Set (read at start-up): used for this issuer's tokens even when they carry ``jku``."""
    jwks: dict[str, Any] | None = None
    """The pinned JWK Set inline (``{ keys = [ … ] }``), instead of ``jwks_file``."""
    jku_allowlist: tuple[str, ...] = ()
    """``jku`` header values this issuer may point to (besides ``jwks_url``); with a pinned JWK Set they are allowed
    in tokens but never fetched. (The one default left in Python: an issuer is an element of ``[[auth.issuers]]``,
    which has no shipped table; empty is the key's absence.)"""
    tenants: tuple[str, ...] | None = None
    """When set, the token's ``tenant`` claim must be one of these."""

    @model_validator(mode="after")
    def _has_keys(self) -> IssuerSettings:
        if not (self.jwks_url or self.jwks_file or self.jwks or self.jku_allowlist):
            raise ValueError(f"issuer {self.iss!r} needs jwks_url, jwks_file, jwks or jku_allowlist")
        if self.jwks_file is not None and self.jwks is not None:
            raise ValueError(f"issuer {self.iss!r}: jwks_file and jwks both pin keys; give one")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ValueError(f"issuer {self.iss!r}: jwks must be a JWK Set ({{ keys = [ ... ] }})")
        return self


class AuthSettings(_Section):
    TABLE = "auth"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    mode: Literal["required", "disabled"]
    issuers: tuple[IssuerSettings, ...]
    algorithms: tuple[str, ...]
    leeway_seconds: int = Field(ge=0, le=600)
    max_token_lifetime_seconds: int = Field(gt=0)
    jwks_cache_seconds: int = Field(ge=0)
    jwks_timeout_seconds: float = Field(gt=0)
    allow_http: bool
    """Allow JWKS URLs over plain http (test servers only)."""

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        refused = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if refused or not value:
            raise ValueError(f"only asymmetric algorithms are allowed (never none or HMAC): {refused or 'empty'}")
        return value

    @model_validator(mode="after")
    def _https_key_urls(self) -> AuthSettings:
        if not self.allow_http:
            for issuer in self.issuers:
                for url in (issuer.jwks_url, *issuer.jku_allowlist):
                    if url is not None and not url.startswith("https://"):
                        shown = _without_userinfo(url)
                        raise ValueError(f"issuer {issuer.iss!r}: key URL {shown!r} must use https (auth.allow_http)")
        return self


class FhirSettings(_Section):
    TABLE = "fhir"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    allowed_servers: tuple[str, ...]
    """``fhirServer`` values (base URLs) the service may call; anything else is refused without a request."""
    allow_http: bool
    request_timeout_seconds: float = Field(gt=0)
    deadline_seconds: float = Field(gt=0)
    """Overall budget for all FHIR requests of one hook call."""
    max_pages: int = Field(ge=1)
    max_response_bytes: int = Field(gt=0)


class CorsSettings(_Section):
    TABLE = "cors"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    allowed_origins: tuple[str, ...]


class ServerSettings(_Section):
    """The production server (``nxp2-cds serve``); command-line options override these."""

    TABLE = "server"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    host: str
    port: int = Field(ge=0, le=65535)
    workers: int | None = Field(default=None, ge=1, le=256)
    """Worker processes (default: the CPU count, at least 2)."""
    threads: int | None = Field(default=None, ge=1, le=256)
    """Threads per worker (default: 4)."""
    timeout_seconds: int = Field(ge=1)
    """A worker silent for longer than this is restarted."""
    graceful_timeout_seconds: int = Field(ge=1)
    """On SIGTERM, requests in flight get this long to finish."""
    migrate_on_start: bool | None = None
    """Apply database migrations before serving (default: yes for SQLite, no otherwise)."""
    front_door: Literal["auto", "nginx", "gunicorn"]
    """What faces the clients (docs/deployment.md, "Front door"): ``nginx`` buffering every request in front of the
    gunicorn workers (slow or silent clients cannot hold a worker thread), or ``gunicorn`` alone (development only).
    ``auto``: nginx when it is installed; without it, gunicorn alone on a loopback address and a refusal to start on
    any other."""
    nginx: str
    """The nginx executable (a name looked up on PATH and in /usr/sbin, or a path)."""
    header_timeout_seconds: int = Field(ge=1, le=600)
    """A client must send its whole request line and headers within this long (a silent connection is closed)."""
    body_timeout_seconds: int = Field(ge=1, le=600)
    """A client sending a body may pause at most this long between two reads; the response is written with the same
    patience."""
    keepalive_seconds: int = Field(ge=0, le=600)
    """An idle keep-alive connection is closed after this long (0: one request per connection)."""
    max_connections: int = Field(ge=64, le=65536)
    """The most connections the front door holds at once (clients and its own to the workers); beyond it new
    connections wait in the kernel's queue."""
    max_active_requests: int = Field(ge=8, le=65536)
    """The most requests the front door works on at once once their headers are in (receiving a body, waiting for a
    worker or in one); beyond it, 503 with ``Retry-After``. With ``max_body_bytes`` it bounds the disk the body
    buffers take."""
    max_inflight_body_bytes: int = Field(ge=1_000_000)
    """Per worker process: the sum of the bodies of the requests it works on at once. A request whose body does not
    fit beside the others gets 503 with ``Retry-After`` (a body up to ``max_body_bytes`` always fits alone)."""
    retry_after_seconds: int = Field(ge=1, le=3600)
    """``Retry-After`` of the 503 answered when the memory budget is full or a worker is restarting."""
    shutdown_delay_seconds: float = Field(ge=0, le=300)
    """On SIGTERM, ``/readyz`` answers 503 at once and the listener stays open this long before it closes (for load
    balancers that watch readiness; Kubernetes' preStop does this job in deploy/kubernetes)."""
    front_door_secret: SecretStr | None = None
    """Set by ``nxp2-cds serve`` for its workers (never by hand): the secret of the header its nginx writes on every
    request (``cds_service/web/front_door.py``)."""
    runtime_dir: Path | None = None
    """Where the front door keeps its configuration, socket and request-body buffers (default: the system's temporary
    folder). Bodies larger than 64 KB wait there on disk until complete, so it should not be a memory filesystem."""


class DatabaseSettings(_Section):
    """Time bounds on the database, and what the service does while it is unavailable (docs/deployment.md,
    "Database faults")."""

    TABLE = "database"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    connect_timeout_seconds: int = Field(ge=2, le=60)
    """PostgreSQL: the longest wait for a new connection (libpq's minimum is 2). A ``connect_timeout`` in
    ``database_url`` wins."""
    statement_timeout_seconds: float = Field(gt=0, le=300)
    """PostgreSQL: the server's ``statement_timeout`` (an ``options`` parameter in ``database_url`` wins); SQLite: the
    busy timeout (how long a write waits for another writer's lock). No request waits on the database longer than
    this plus half a second, even when the database hangs without answering."""
    pool_timeout_seconds: float = Field(gt=0, le=60)
    """The longest wait for a free connection in this process's pool."""
    retry_after_seconds: int = Field(ge=1, le=3600)
    """``Retry-After`` of the 503 answered (to feedback) while the database is unavailable."""
    readiness_timeout_seconds: float = Field(gt=0, le=10)
    """``/readyz`` gives up on the database after this long (and answers at once while an earlier check still
    waits)."""
    readiness_requires_database: bool
    """False (the default): ``/readyz`` reports an unavailable database but stays ready, so every replica stays in
    the Service and hook calls go on answering through an outage (a reachable database with a schema that is not
    current is still not ready). True: ``/readyz`` answers 503 while the database is unavailable. With
    ``replay_fallback = "refuse"`` and authentication on, an unavailable database always makes a replica not ready
    (it could answer no hook call)."""
    replay_fallback: Literal["memory", "refuse"]
    """While the database is unavailable, JWT replay checks use this process's memory (``memory``: each worker
    refuses the ``jti`` values it has seen) or every authenticated call is refused with 503 (``refuse``)."""
    replay_memory_max_jtis: int = Field(ge=100, le=10_000_000)
    """The most JWT ids each worker keeps in memory (about 200 bytes each); the oldest go first."""
    spool_dir: Path | None = None
    """Where each worker spools the records of the cards it issues before they reach the database (default: the
    folder ``nxp2-cds-spool`` beside the SQLite file, or in the working folder). It must be on a local, persistent
    disk: records waiting there survive a database outage and the death of the process that wrote them."""
    spool_max_bytes: int = Field(ge=100_000)
    """The most each worker process keeps waiting in the spool (about 400 bytes a card); records beyond it are
    dropped, counted (``nxp2_cds_spool_records_total{event="dropped_full"}``) and logged."""


class MappingSettings(_Section):
    TABLE = "mappings"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    local_codes: dict[str, list[str]]
    """Predictor id (its first value set) or value set id → ``["system|code", …]``."""


class CardSettings(_Section):
    TABLE = "cards"
    if TYPE_CHECKING:

        def __init__(self, **values: Any) -> None: ...  # no key is required (see _Section)

    language: str
    """The site's language for cards, discovery and the evidence page (``en`` or ``zh-CN``); a request's
    ``Accept-Language`` may choose another supported one."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NXP2_CDS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    public_base_url: str | None = None
    """The service's external URL (behind a proxy): JWT ``aud`` checks and evidence links use it."""
    database_url: str
    database: DatabaseSettings
    knowledge_file: Path | None = None
    max_body_bytes: int = Field(gt=0)
    max_prefetch_resources: int = Field(gt=0)
    """The most resources a request's prefetch may carry (413 beyond)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    auth: AuthSettings
    fhir: FhirSettings
    cors: CorsSettings
    mappings: MappingSettings
    server: ServerSettings
    cards: CardSettings

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        named = os.environ.get(CONFIG_ENV)
        if named:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(named)))
        sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_path("default.toml")))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from every layer; raises :class:`SettingsError` naming the key when invalid."""
    named = os.environ.get(CONFIG_ENV)
    if named and not Path(named).is_file():
        raise SettingsError(f"{CONFIG_ENV}={named}: no such file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}" for e in exc.errors()]
        # from None: the ValidationError's own text quotes the input values (a database URL's password)
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None
    except ValueError as exc:  # e.g. a TOML syntax error in the named file
        raise SettingsError(f"invalid configuration: {exc}") from None
