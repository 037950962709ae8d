"""The settings groups: one frozen dataclass per concern, each field documented with its variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, get_args

_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


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
    #: Pre-created tenant databases kept ready on each server for signups (``CARDVAULT_SPARE_DATABASES``;
    #: 0 turns spares off: every tenant is cloned when created).
    spare_databases: int = 2


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
class ReplicaSettings:
    """Read replicas: when a tenant API read may be served by a replica of the tenant's server."""

    #: A replica whose replay lag is above this many seconds serves no reads (``CARDVAULT_REPLICA_MAX_LAG``).
    max_lag: float = 1.0
    #: Seconds between two measurements of every replica's lag and reachability
    #: (``CARDVAULT_REPLICA_CHECK_INTERVAL``).
    check_interval: float = 1.0


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
    #: The address users reach the service at, for links in mail and Stripe return URLs
    #: (``CARDVAULT_PUBLIC_URL``; empty: ``http://{host}:{port}``).
    public_url: str = ""

    @property
    def base_url(self) -> str:
        """``public_url`` without a trailing slash, or the listen address when unset."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


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
    #: Earlier values of the secret key, still readable while ``cardvault keys rotate`` re-encrypts what
    #: they protect under ``secret_key`` (``CARDVAULT_SECRET_KEY_PREVIOUS``, comma-separated).
    previous_secret_keys: tuple[str, ...] = ()


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


#: Where per-tenant metric series are served (``CARDVAULT_METRICS_TENANT_SERIES``).
TenantSeries = Literal["inline", "separate", "off"]
TENANT_SERIES: tuple[TenantSeries, ...] = get_args(TenantSeries)


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
    #: Where the per-tenant series (labelled by ``tenant``) are served (``CARDVAULT_METRICS_TENANT_SERIES``):
    #: ``inline`` in /metrics, ``separate`` in /metrics/tenants (scraped less often; /metrics keeps the
    #: aggregates, whatever the tenant count) or ``off``.
    metrics_tenant_series: TenantSeries = "inline"
    #: Seconds between health checks of every active tenant on the leader (connect as its role,
    #: ``SELECT 1``; ``CARDVAULT_HEALTH_INTERVAL``; 0 disables). ``concurrency`` bounds them too.
    health_interval: float = 300.0


@dataclasses.dataclass(frozen=True)
class BillingSettings:
    """Who takes the money (``none``: super-admins set tiers by hand) and how non-payment is handled."""

    #: ``none`` or ``stripe`` (``CARDVAULT_BILLING``).
    provider: str = "none"
    #: Stripe secret key (``CARDVAULT_STRIPE_API_KEY``); required with ``stripe``.
    stripe_api_key: str = ""
    #: Signing secret of the webhook endpoint (``CARDVAULT_STRIPE_WEBHOOK_SECRET``); required with ``stripe``.
    stripe_webhook_secret: str = ""
    #: Base URL of the Stripe API (``CARDVAULT_STRIPE_API_BASE``; unset in production, tests point it at
    #: local stand-ins).
    stripe_api_base: str = ""
    #: Seconds a ``past_due`` tenant keeps working before it is suspended for non-payment
    #: (``CARDVAULT_BILLING_GRACE``).
    grace: float = 7 * 86400.0
    #: What a deleted subscription does to the tenant: ``starter`` (back to the free tier) or ``suspend``
    #: (``CARDVAULT_BILLING_ON_CANCEL``).
    on_cancel: str = "starter"
    #: Seconds between overage reports to the provider on the leader; 0 disables
    #: (``CARDVAULT_BILLING_USAGE_INTERVAL``).
    usage_interval: float = 3600.0
    #: How far a tenant paying for a plan (subscription active, trialing or past_due in its grace, on a
    #: paid tier) may exceed its cards, storage and API-call limits, as a multiple of them; what is over the
    #: plan is billed as overage. 1.0: no overage, the limits are hard (``CARDVAULT_OVERAGE_CEILING``).
    overage_ceiling: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.provider != "none"

    @property
    def quota_ceiling(self) -> float:
        """The multiple of a paying tenant's plan limits that is enforced (1.0 with billing off)."""
        return self.overage_ceiling if self.enabled else 1.0


@dataclasses.dataclass(frozen=True)
class MailSettings:
    """Outgoing mail (verification links, invitations), sent from an outbox table."""

    #: ``smtp://[user:password@]host[:port]`` or ``smtps://...`` (``CARDVAULT_SMTP_URL``; empty: mail is kept
    #: in the outbox, unsent).
    smtp_url: str = ""
    #: Sender address (``CARDVAULT_MAIL_FROM``).
    sender: str = "CardVault <no-reply@cardvault.invalid>"
    #: Seconds between outbox deliveries (``CARDVAULT_MAIL_INTERVAL``; 0 disables the job).
    interval: float = 10.0


@dataclasses.dataclass(frozen=True)
class SignupSettings:
    """Self-serve signup (``POST /signup``)."""

    #: Whether the public signup endpoints are open (``CARDVAULT_SIGNUP``, 1/0).
    enabled: bool = True
    #: Signups allowed per source address per hour (``CARDVAULT_SIGNUP_RATE``).
    per_address_per_hour: int = 10
    #: Lifetime of an email verification link in seconds (``CARDVAULT_VERIFY_TTL``).
    verify_ttl: float = 3 * 86400.0


@dataclasses.dataclass(frozen=True)
class BackupSchedule:
    """How often one tier's tenants are backed up and how long each backup is kept."""

    #: Seconds between two backups of a tenant.
    interval: float
    #: Seconds a backup is kept before it expires and is deleted.
    retention: float


#: ``CARDVAULT_BACKUP_SCHEDULE``'s default: starter daily kept 7 days, professional daily kept 30,
#: enterprise every 6 hours kept 90.
DEFAULT_BACKUP_SCHEDULES: dict[str, BackupSchedule] = {
    "starter": BackupSchedule(86400.0, 7 * 86400.0),
    "professional": BackupSchedule(86400.0, 30 * 86400.0),
    "enterprise": BackupSchedule(6 * 3600.0, 90 * 86400.0),
}


@dataclasses.dataclass(frozen=True)
class BackupSettings:
    """Per-tenant backups (``pg_dump -Fc``, encrypted as they stream), their store, schedule and restores."""

    #: Directory of the local backup store (``CARDVAULT_BACKUP_DIR``; empty: ``{CARDVAULT_DATA_DIR}/backups``).
    directory: str = ""
    #: S3 bucket; when set, backups and exports go to S3-compatible object storage instead of the directory
    #: (``CARDVAULT_BACKUP_S3_BUCKET``).
    s3_bucket: str = ""
    #: Endpoint URL of the S3-compatible service (``CARDVAULT_BACKUP_S3_ENDPOINT``; empty: AWS).
    s3_endpoint: str = ""
    #: Region (``CARDVAULT_BACKUP_S3_REGION``).
    s3_region: str = "us-east-1"
    #: Access key id and secret (``CARDVAULT_BACKUP_S3_ACCESS_KEY``, ``CARDVAULT_BACKUP_S3_SECRET_KEY``;
    #: empty: the SDK's default credential chain).
    s3_access_key: str = ""
    s3_secret_key: str = ""
    #: Key prefix of every object in the bucket (``CARDVAULT_BACKUP_S3_PREFIX``).
    s3_prefix: str = ""
    #: Interval and retention per tier (``CARDVAULT_BACKUP_SCHEDULE``, e.g.
    #: ``starter=1d/7d,professional=1d/30d,enterprise=6h/90d``; tiers not named keep their default).
    schedules: dict[str, BackupSchedule] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BACKUP_SCHEDULES))
    #: Seconds between runs of the scheduled-backup job on the leader; each run starts the backups that are
    #: due (``CARDVAULT_BACKUP_INTERVAL``; 0: no scheduled backups).
    interval: float = 300.0
    #: Backups running at once on one database server (``CARDVAULT_BACKUP_CONCURRENCY``).
    per_server_concurrency: int = 2
    #: Seconds between runs of the restore-verification job, which restores a sample of recent backups into
    #: scratch databases (``CARDVAULT_BACKUP_VERIFY_INTERVAL``; 0: off).
    verify_interval: float = 86400.0
    #: Backups restored per verification run (``CARDVAULT_BACKUP_VERIFY_SAMPLE``).
    verify_sample: int = 3
    #: Seconds the database a restore replaced is kept for a rollback (``CARDVAULT_RESTORE_ROLLBACK_WINDOW``).
    rollback_window: float = 3 * 86400.0
    #: A tenant whose last successful backup is older than this many times its interval counts as stale
    #: (metrics and the alert rule; ``CARDVAULT_BACKUP_STALE_FACTOR``).
    stale_factor: float = 2.0

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket)


@dataclasses.dataclass(frozen=True)
class MoveSettings:
    """Online tenant moves between servers (``controlplane.moves``)."""

    #: Seconds a move waits for the target's copy to finish its initial sync and catch up before it
    #: freezes writes (``CARDVAULT_MOVE_SYNC_TIMEOUT``); longer: the move is undone, nothing changed.
    sync_timeout: float = 1800.0
    #: Seconds the write freeze may wait for the last changes to arrive (``CARDVAULT_MOVE_FREEZE_TIMEOUT``);
    #: longer: the move is undone and writes resume on the source.
    freeze_timeout: float = 10.0
    #: Most tenants a server may hold: no move goes to it and no new tenant is placed on it once it holds
    #: this many (``CARDVAULT_SERVER_MAX_TENANTS``; 0: no limit).
    server_max_tenants: int = 0
    #: Bytes of tenant databases one server is meant to hold (``CARDVAULT_SERVER_CAPACITY_BYTES``; 0:
    #: unknown, so no server counts as full by bytes and none is projected to fill). PostgreSQL does not
    #: know its volume: set it to the data volume less room for WAL and retired databases.
    server_capacity_bytes: int = 0
    #: A server counts as full (placement and moves skip it, rebalancing moves tenants off it) when its
    #: projected bytes reach this share of ``server_capacity_bytes`` or its connections this share of its
    #: ``max_connections`` (``CARDVAULT_SERVER_FULL_RATIO``, 0 < r <= 1).
    server_full_ratio: float = 0.9
    #: Days ahead a server's fill is projected at its growth trend (``CARDVAULT_SERVER_FILL_HORIZON_DAYS``).
    server_fill_horizon_days: int = 14


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """GDPR exports and erasure, audit retention, storage hygiene."""

    #: Seconds a finished export's download link works (``CARDVAULT_EXPORT_TTL``); the archive is deleted
    #: after its one download or at expiry.
    export_ttl: float = 86400.0
    #: Seconds audit entries are kept, in the control database and in every tenant database
    #: (``CARDVAULT_AUDIT_RETENTION``; 0: forever).
    audit_retention: float = 400 * 86400.0
    #: Seconds between storage hygiene runs on the leader (``CARDVAULT_HYGIENE_INTERVAL``; 0: off).
    hygiene_interval: float = 86400.0
    #: Seconds a quarantined file (on disk with no row) is kept before it is deleted
    #: (``CARDVAULT_QUARANTINE_GRACE``).
    quarantine_grace: float = 7 * 86400.0


@dataclasses.dataclass(frozen=True)
class TaskQueueSettings:
    """The distributed task queue (per-tenant fan-out work) and the workers that run it."""

    #: Whether ``cardvault serve`` runs a worker in its process (``CARDVAULT_WORKER``, 1/0); with 0 it only
    #: enqueues, and ``cardvault worker`` processes do the work.
    worker: bool = True
    #: Tasks one worker runs at once (``CARDVAULT_WORKER_CONCURRENCY``).
    concurrency: int = 4
    #: Seconds between a worker's heartbeats (``CARDVAULT_WORKER_HEARTBEAT``).
    heartbeat: float = 10.0
    #: Seconds without a heartbeat after which a worker counts as dead and its running tasks are retried
    #: by another (``CARDVAULT_WORKER_STALLED_AFTER``; keep it several heartbeats long).
    stalled_after: float = 30.0
