"""Service configuration: one immutable ``Settings`` object built from ``CARDVAULT_*`` variables.

Settings are read once by the entry point (CLI or test harness) and passed in; nothing reads the
environment at import time. Each group holds the fields of one concern and documents them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

from controlplane.errors import ConfigError

_PROJECT_ROOT = Path(__file__).resolve().parent.parent

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit ``ms``, ``s``, ``m``, ``h`` or ``d``."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 30s, 15m, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """The proxies in ``text``: comma-separated IP addresses or networks (CIDR), or ``*`` for any peer."""
    proxies: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item == "*":
            return ("*",)
        try:
            proxies.append(str(ipaddress.ip_network(item, strict=False) if "/" in item else ipaddress.ip_address(item)))
        except ValueError:
            raise ConfigError(
                f"CARDVAULT_TRUSTED_PROXIES: {item!r} is no IP address or network (e.g. 10.0.0.5, 10.0.0.0/8)"
            ) from None
    return tuple(proxies)


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """Where the control database is and how management connections behave."""

    #: DSN of the control database (``CARDVAULT_DATABASE_URL``); empty means "start a local cluster".
    url: str = ""
    #: Seconds to wait for a PostgreSQL connection before giving up (``CARDVAULT_CONNECT_TIMEOUT``).
    connect_timeout: float = 5.0
    #: Per-statement limit on management connections (``CARDVAULT_STATEMENT_TIMEOUT``).
    statement_timeout: float = 60.0
    #: Per-statement limit while migrating tenant databases (``CARDVAULT_MIGRATION_STATEMENT_TIMEOUT``);
    #: long, because an index build on a big tenant is legitimate. Lock waits are capped at 5 s anyway.
    migration_statement_timeout: float = 3600.0
    #: Connections in the control-database pool (``CARDVAULT_CONTROL_POOL_SIZE``).
    control_pool_size: int = 10
    #: Seconds a fleet server's decrypted DSN is kept in memory before it is read from the registry
    #: again (``CARDVAULT_SERVER_DSN_TTL``; 0: read every time). Bounds how late a replica that missed
    #: the change notification uses a rotated password.
    server_dsn_ttl: float = 60.0


@dataclasses.dataclass(frozen=True)
class ProvisioningSettings:
    """How tenant databases are created, migrated and removed."""

    #: Name of the template database kept at tenant_schema head on every server
    #: (``CARDVAULT_TEMPLATE_DATABASE``).
    template_database: str = "cardvault_template"
    #: ``CREATE DATABASE ... STRATEGY``: ``wal_log`` or ``file_copy`` (``CARDVAULT_CLONE_STRATEGY``).
    clone_strategy: str = "wal_log"
    #: Seconds a soft-deleted tenant is kept before purge (``CARDVAULT_DELETE_GRACE``).
    delete_grace: float = 7 * 86400.0
    #: Tenant databases migrated at once by ``migrate tenants`` (``CARDVAULT_MIGRATION_CONCURRENCY``).
    migration_concurrency: int = 4
    #: Seconds between reconciler cycles inside the service; 0 disables (``CARDVAULT_RECONCILE_INTERVAL``).
    reconcile_interval: float = 60.0
    #: Attempts at an interrupted operation before the reconciler rolls it back
    #: (``CARDVAULT_MAX_ATTEMPTS``).
    max_attempts: int = 3
    #: alembic directory of the tenant schema (``CARDVAULT_TENANT_SCHEMA_DIR``).
    tenant_schema_dir: Path = _PROJECT_ROOT / "tenant_schema"
    #: alembic directory of the control database (``CARDVAULT_REGISTRY_SCHEMA_DIR``).
    registry_schema_dir: Path = _PROJECT_ROOT / "alembic"


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """The LRU of per-tenant connection pools that serves tenant API traffic."""

    #: Open per-tenant pools at most (``CARDVAULT_POOL_CAPACITY``).
    capacity: int = 100
    #: Connections across all tenant pools at most; keep it under the servers' max_connections
    #: (``CARDVAULT_CONNECTION_BUDGET``).
    connection_budget: int = 200
    #: Connections one tenant's pool may open (``CARDVAULT_POOL_MAX_SIZE``).
    per_tenant_max: int = 2
    #: Seconds an idle pooled connection is kept (``CARDVAULT_POOL_IDLE_TIMEOUT``).
    idle_timeout: float = 300.0
    #: Seconds a request waits for a tenant connection before 503 (``CARDVAULT_POOL_TIMEOUT``).
    acquire_timeout: float = 5.0
    #: A pooled connection idle at least this long is checked (one round trip) before it is handed out
    #: (``CARDVAULT_POOL_CHECK_AFTER``); busier ones are trusted.
    check_after_idle: float = 1.0


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """The HTTP service."""

    #: Listen address (``CARDVAULT_HOST``).
    host: str = "127.0.0.1"
    #: Listen port (``CARDVAULT_PORT``).
    port: int = 8000
    #: Tenants are also reached as ``{slug}.{base_domain}`` (``CARDVAULT_BASE_DOMAIN``; empty: off).
    base_domain: str = ""
    #: Largest card image accepted, in bytes (``CARDVAULT_MAX_IMAGE_BYTES``).
    max_image_bytes: int = 5 * 1024 * 1024
    #: Peers whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` are believed (``CARDVAULT_TRUSTED_PROXIES``:
    #: comma-separated IPs or CIDR networks, ``*`` for any peer). Empty: none, not even 127.0.0.1; the
    #: address the login throttle, sessions and audit rows see is then always the connecting peer's.
    trusted_proxies: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SecuritySettings:
    """Secrets. Both are filled from the data directory on a local run when unset."""

    #: Key for encrypting tenant credentials at rest (``CARDVAULT_SECRET_KEY``, >= 32 characters).
    secret_key: str = ""
    #: Automation credential for ``/admin/*`` (``CARDVAULT_ADMIN_TOKEN``); kept only as a hash in memory.
    #: Optional: without it, only super-admin JWTs reach ``/admin/*``.
    admin_token: str = ""
    #: Scrape-only credential for ``GET /metrics`` (``CARDVAULT_METRICS_TOKEN``); kept only as a hash.
    metrics_token: str = ""


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    """Tokens, password hashing, rate limits."""

    #: Lifetime of access JWTs in seconds (``CARDVAULT_ACCESS_TOKEN_TTL``).
    access_token_ttl: float = 900.0
    #: Lifetime of a login session (its refresh token) in seconds (``CARDVAULT_REFRESH_TOKEN_TTL``).
    refresh_token_ttl: float = 30 * 86400.0
    #: Seconds after a refresh in which the refresh token it spent gets the same successor again instead of
    #: counting as a replay (``CARDVAULT_REFRESH_GRACE``; 0: no grace). Covers concurrent refreshes and a
    #: retry after a lost response.
    refresh_grace: float = 5.0
    #: Lifetime of an impersonation token in seconds; not refreshable (``CARDVAULT_IMPERSONATION_TTL``).
    impersonation_ttl: float = 900.0
    #: Lifetime of an invitation in seconds (``CARDVAULT_INVITE_TTL``).
    invite_ttl: float = 7 * 86400.0
    #: argon2id memory cost in KiB and passes (``CARDVAULT_ARGON2_MEMORY_KIB``, ``CARDVAULT_ARGON2_TIME_COST``);
    #: the defaults are OWASP's minimum (19 MiB, 2 passes).
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    #: Failed logins allowed per account and per source address in ``login_window`` seconds
    #: (``CARDVAULT_LOGIN_MAX_FAILURES``, ``CARDVAULT_LOGIN_MAX_FAILURES_PER_ADDRESS``, ``CARDVAULT_LOGIN_WINDOW``).
    login_max_failures: int = 10
    login_max_failures_per_address: int = 50
    login_window: float = 900.0
    #: Seconds a request's principal (user, role, session state) is reused for the same session or key
    #: (``CARDVAULT_PRINCIPAL_CACHE_TTL``; 0: read on every request). Bounds how late other instances
    #: notice a logout, a disabled user or a role change.
    principal_cache_ttl: float = 1.0
    #: Seconds a principal is reused while this instance hears the control plane's change notifications
    #: (``CARDVAULT_PRINCIPAL_CACHE_MAX``): a change made through any instance (API or CLI) reaches every
    #: instance at once; this bounds only a change whose notification was lost. Never beyond the
    #: session's or key's own expiry; at most ``principal_cache_ttl`` for anything an impersonation made.
    principal_cache_max: float = 10.0
    #: Shared rate-limit counters across instances (``CARDVAULT_REDIS_URL``; empty: in-process counters).
    redis_url: str = ""


@dataclasses.dataclass(frozen=True)
class UsageSettings:
    """The usage collectors (database, table and storage sizes per tenant) and their history."""

    #: Seconds between collections on the scheduler leader; 0 disables (``CARDVAULT_USAGE_INTERVAL``).
    interval: float = 300.0
    #: Tenant databases whose tables are scanned at once, each on a short-lived connection of its own
    #: (``CARDVAULT_USAGE_CONCURRENCY``).
    concurrency: int = 4
    #: A tenant's tables are scanned again after this many seconds even if its database size held
    #: (``CARDVAULT_USAGE_RESCAN_AFTER``; 0: only when the size changes): a row written into free space of a
    #: page leaves the size as it was.
    rescan_after: float = 3600.0
    #: Seconds of history kept at full resolution (``CARDVAULT_USAGE_RAW_RETENTION``).
    raw_retention: float = 7 * 86400.0
    #: Seconds of history kept at one point per tenant, metric and hour (``CARDVAULT_USAGE_HOURLY_RETENTION``).
    hourly_retention: float = 90 * 86400.0
    #: Seconds of history kept at all, at one point per tenant, metric and day beyond the hourly window
    #: (``CARDVAULT_USAGE_DAILY_RETENTION``).
    daily_retention: float = 400 * 86400.0
    #: Seconds between history compactions on the leader; 0 disables (``CARDVAULT_USAGE_COMPACT_INTERVAL``).
    compact_interval: float = 86400.0
    #: Per-table series in /metrics (``CARDVAULT_METRICS_PER_TABLE``, 1/0): off for very large fleets.
    metrics_per_table: bool = True
    #: Seconds between health checks of every active tenant on the leader (connect as its role,
    #: ``SELECT 1``; ``CARDVAULT_HEALTH_INTERVAL``; 0 disables). ``concurrency`` bounds them too.
    health_interval: float = 300.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the control plane is configured with."""

    #: Local state: private PostgreSQL cluster, generated secrets, stored files (``CARDVAULT_DATA_DIR``).
    data_dir: Path = Path(".cardvault")
    #: Python logging level (``CARDVAULT_LOG_LEVEL``).
    log_level: str = "INFO"
    #: Testing only: make operations fail at named steps (``CARDVAULT_FAILPOINTS``, see failpoints.py).
    failpoints: str = ""
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    provisioning: ProvisioningSettings = dataclasses.field(default_factory=ProvisioningSettings)
    pools: PoolSettings = dataclasses.field(default_factory=PoolSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    security: SecuritySettings = dataclasses.field(default_factory=SecuritySettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    usage: UsageSettings = dataclasses.field(default_factory=UsageSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``CARDVAULT_*`` variables (``os.environ`` when ``env`` is None)."""
        source = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            value = source.get(f"CARDVAULT_{name}", "").strip()
            return value or default

        def get_int(name: str, default: int, minimum: int) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"CARDVAULT_{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise ConfigError(f"CARDVAULT_{name} must be >= {minimum}, got {value}")
            return value

        def get_duration(name: str, default: float) -> float:
            raw = source.get(f"CARDVAULT_{name}", "").strip()
            return parse_duration(raw) if raw else default

        usage = UsageSettings(
            interval=get_duration("USAGE_INTERVAL", UsageSettings.interval),
            concurrency=get_int("USAGE_CONCURRENCY", UsageSettings.concurrency, 1),
            rescan_after=get_duration("USAGE_RESCAN_AFTER", UsageSettings.rescan_after),
            raw_retention=get_duration("USAGE_RAW_RETENTION", UsageSettings.raw_retention),
            hourly_retention=get_duration("USAGE_HOURLY_RETENTION", UsageSettings.hourly_retention),
            daily_retention=get_duration("USAGE_DAILY_RETENTION", UsageSettings.daily_retention),
            compact_interval=get_duration("USAGE_COMPACT_INTERVAL", UsageSettings.compact_interval),
            metrics_per_table=get("METRICS_PER_TABLE", "1").lower() not in ("0", "false", "no", "off"),
            health_interval=get_duration("HEALTH_INTERVAL", UsageSettings.health_interval),
        )
        if not usage.raw_retention <= usage.hourly_retention <= usage.daily_retention:
            raise ConfigError(
                "usage history windows must grow: CARDVAULT_USAGE_RAW_RETENTION <= "
                "CARDVAULT_USAGE_HOURLY_RETENTION <= CARDVAULT_USAGE_DAILY_RETENTION"
            )
        strategy = get("CLONE_STRATEGY", ProvisioningSettings.clone_strategy).lower()
        if strategy not in ("wal_log", "file_copy"):
            raise ConfigError(f"CARDVAULT_CLONE_STRATEGY must be wal_log or file_copy, got {strategy!r}")
        defaults = ProvisioningSettings()
        return cls(
            data_dir=Path(get("DATA_DIR", ".cardvault")),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            failpoints=get("FAILPOINTS", ""),
            database=DatabaseSettings(
                url=get("DATABASE_URL", ""),
                connect_timeout=get_duration("CONNECT_TIMEOUT", DatabaseSettings.connect_timeout),
                statement_timeout=get_duration("STATEMENT_TIMEOUT", DatabaseSettings.statement_timeout),
                migration_statement_timeout=get_duration(
                    "MIGRATION_STATEMENT_TIMEOUT", DatabaseSettings.migration_statement_timeout
                ),
                control_pool_size=get_int("CONTROL_POOL_SIZE", DatabaseSettings.control_pool_size, 2),
                server_dsn_ttl=get_duration("SERVER_DSN_TTL", DatabaseSettings.server_dsn_ttl),
            ),
            provisioning=ProvisioningSettings(
                template_database=get("TEMPLATE_DATABASE", defaults.template_database),
                clone_strategy=strategy,
                delete_grace=get_duration("DELETE_GRACE", defaults.delete_grace),
                migration_concurrency=get_int("MIGRATION_CONCURRENCY", defaults.migration_concurrency, 1),
                reconcile_interval=get_duration("RECONCILE_INTERVAL", defaults.reconcile_interval),
                max_attempts=get_int("MAX_ATTEMPTS", defaults.max_attempts, 1),
                tenant_schema_dir=Path(get("TENANT_SCHEMA_DIR", str(defaults.tenant_schema_dir))),
                registry_schema_dir=Path(get("REGISTRY_SCHEMA_DIR", str(defaults.registry_schema_dir))),
            ),
            pools=PoolSettings(
                capacity=get_int("POOL_CAPACITY", PoolSettings.capacity, 1),
                connection_budget=get_int("CONNECTION_BUDGET", PoolSettings.connection_budget, 1),
                per_tenant_max=get_int("POOL_MAX_SIZE", PoolSettings.per_tenant_max, 1),
                idle_timeout=get_duration("POOL_IDLE_TIMEOUT", PoolSettings.idle_timeout),
                acquire_timeout=get_duration("POOL_TIMEOUT", PoolSettings.acquire_timeout),
                check_after_idle=get_duration("POOL_CHECK_AFTER", PoolSettings.check_after_idle),
            ),
            http=HttpSettings(
                host=get("HOST", HttpSettings.host),
                port=get_int("PORT", HttpSettings.port, 1),
                base_domain=get("BASE_DOMAIN", "").lower().strip("."),
                max_image_bytes=get_int("MAX_IMAGE_BYTES", HttpSettings.max_image_bytes, 1),
                trusted_proxies=parse_trusted_proxies(get("TRUSTED_PROXIES", "")),
            ),
            security=SecuritySettings(
                secret_key=get("SECRET_KEY", ""),
                admin_token=get("ADMIN_TOKEN", ""),
                metrics_token=get("METRICS_TOKEN", ""),
            ),
            auth=AuthSettings(
                access_token_ttl=get_duration("ACCESS_TOKEN_TTL", AuthSettings.access_token_ttl),
                refresh_token_ttl=get_duration("REFRESH_TOKEN_TTL", AuthSettings.refresh_token_ttl),
                refresh_grace=get_duration("REFRESH_GRACE", AuthSettings.refresh_grace),
                impersonation_ttl=get_duration("IMPERSONATION_TTL", AuthSettings.impersonation_ttl),
                invite_ttl=get_duration("INVITE_TTL", AuthSettings.invite_ttl),
                argon2_memory_kib=get_int("ARGON2_MEMORY_KIB", AuthSettings.argon2_memory_kib, 8),
                argon2_time_cost=get_int("ARGON2_TIME_COST", AuthSettings.argon2_time_cost, 1),
                login_max_failures=get_int("LOGIN_MAX_FAILURES", AuthSettings.login_max_failures, 1),
                login_max_failures_per_address=get_int(
                    "LOGIN_MAX_FAILURES_PER_ADDRESS", AuthSettings.login_max_failures_per_address, 1
                ),
                login_window=get_duration("LOGIN_WINDOW", AuthSettings.login_window),
                principal_cache_ttl=get_duration("PRINCIPAL_CACHE_TTL", AuthSettings.principal_cache_ttl),
                principal_cache_max=get_duration("PRINCIPAL_CACHE_MAX", AuthSettings.principal_cache_max),
                redis_url=get("REDIS_URL", ""),
            ),
            usage=usage,
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with top-level fields replaced (settings are immutable)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
