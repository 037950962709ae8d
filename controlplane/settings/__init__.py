"""Service configuration: one immutable ``Settings`` object built from ``CARDVAULT_*`` variables.

Settings are read once by the entry point (CLI or test harness) and passed in; nothing reads the
environment at import time. Each group holds the fields of one concern and documents them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from controlplane.errors import ConfigError
from controlplane.settings.groups import (
    DEFAULT_BACKUP_SCHEDULES,
    TENANT_SERIES,
    AuthSettings,
    BackupSchedule,
    BackupSettings,
    BillingSettings,
    DatabaseSettings,
    HttpSettings,
    MailSettings,
    MoveSettings,
    PoolSettings,
    PrivacySettings,
    ProvisioningSettings,
    ReplicaSettings,
    SecuritySettings,
    SignupSettings,
    TaskQueueSettings,
    UsageSettings,
)

__all__ = [
    "AuthSettings",
    "BackupSchedule",
    "BackupSettings",
    "BillingSettings",
    "DatabaseSettings",
    "HttpSettings",
    "MailSettings",
    "MoveSettings",
    "PoolSettings",
    "PrivacySettings",
    "ProvisioningSettings",
    "ReplicaSettings",
    "SecuritySettings",
    "Settings",
    "SignupSettings",
    "TaskQueueSettings",
    "UsageSettings",
    "parse_backup_schedules",
    "parse_duration",
    "parse_trusted_proxies",
]

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


def parse_backup_schedules(text: str) -> dict[str, BackupSchedule]:
    """``CARDVAULT_BACKUP_SCHEDULE``: ``tier=interval/retention`` items, comma-separated (e.g.
    ``starter=1d/7d,enterprise=6h/90d``); tiers not named keep their default."""
    schedules = dict(DEFAULT_BACKUP_SCHEDULES)
    for item in filter(None, (part.strip() for part in text.split(","))):
        tier, _, spec = item.partition("=")
        interval, _, retention = spec.partition("/")
        tier = tier.strip().lower()
        if tier not in DEFAULT_BACKUP_SCHEDULES or not interval.strip() or not retention.strip():
            raise ConfigError(
                f"CARDVAULT_BACKUP_SCHEDULE: {item!r} is not tier=interval/retention with a tier of "
                + ", ".join(DEFAULT_BACKUP_SCHEDULES)
                + " (e.g. enterprise=6h/90d)"
            )
        schedule = BackupSchedule(parse_duration(interval), parse_duration(retention))
        if schedule.interval <= 0 or schedule.retention < schedule.interval:
            raise ConfigError(f"CARDVAULT_BACKUP_SCHEDULE: {item!r} needs an interval > 0 and retention >= interval")
        schedules[tier] = schedule
    return schedules


def _check_billing(billing: BillingSettings) -> None:
    if billing.provider not in ("none", "stripe"):
        raise ConfigError(f"CARDVAULT_BILLING must be none or stripe, got {billing.provider!r}")
    if billing.on_cancel not in ("starter", "suspend"):
        raise ConfigError(f"CARDVAULT_BILLING_ON_CANCEL must be starter or suspend, got {billing.on_cancel!r}")
    if not 1.0 <= billing.overage_ceiling <= 100.0:
        raise ConfigError(
            f"CARDVAULT_OVERAGE_CEILING must be 1.0..100 (1.0: hard limits), got {billing.overage_ceiling}"
        )
    if billing.provider == "stripe" and not (billing.stripe_api_key and billing.stripe_webhook_secret):
        raise ConfigError("CARDVAULT_BILLING=stripe needs CARDVAULT_STRIPE_API_KEY and CARDVAULT_STRIPE_WEBHOOK_SECRET")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the control plane is configured with."""

    #: Local state: private PostgreSQL cluster, generated secrets, stored files (``CARDVAULT_DATA_DIR``).
    data_dir: Path = Path(".cardvault")
    #: Python logging level (``CARDVAULT_LOG_LEVEL``).
    log_level: str = "INFO"
    #: Testing only: make operations fail at named steps (``CARDVAULT_FAILPOINTS``, see failpoints.py).
    failpoints: str = ""
    #: ``false`` serves one tenant (``default_tenant``) at ``/api`` with no routing, for self-hosters
    #: (``CARDVAULT_MULTI_TENANT``, 1/0).
    multi_tenant: bool = True
    #: Slug of the tenant single-tenant mode serves (``CARDVAULT_DEFAULT_TENANT``).
    default_tenant: str = "default"
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    provisioning: ProvisioningSettings = dataclasses.field(default_factory=ProvisioningSettings)
    pools: PoolSettings = dataclasses.field(default_factory=PoolSettings)
    replicas: ReplicaSettings = dataclasses.field(default_factory=ReplicaSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    security: SecuritySettings = dataclasses.field(default_factory=SecuritySettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    usage: UsageSettings = dataclasses.field(default_factory=UsageSettings)
    billing: BillingSettings = dataclasses.field(default_factory=BillingSettings)
    mail: MailSettings = dataclasses.field(default_factory=MailSettings)
    signup: SignupSettings = dataclasses.field(default_factory=SignupSettings)
    backups: BackupSettings = dataclasses.field(default_factory=BackupSettings)
    privacy: PrivacySettings = dataclasses.field(default_factory=PrivacySettings)
    moves: MoveSettings = dataclasses.field(default_factory=MoveSettings)
    tasks: TaskQueueSettings = dataclasses.field(default_factory=TaskQueueSettings)

    @property
    def backup_dir(self) -> Path:
        """The local backup store's directory (``CARDVAULT_BACKUP_DIR`` or ``{data_dir}/backups``)."""
        return Path(self.backups.directory) if self.backups.directory else self.data_dir / "backups"

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

        def get_float(name: str, default: float) -> float:
            raw = get(name, str(default))
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"CARDVAULT_{name} must be a number, got {raw!r}") from None
            if not math.isfinite(value):
                raise ConfigError(f"CARDVAULT_{name} must be a finite number, got {raw!r}")
            return value

        def get_ratio(name: str, default: float) -> float:
            value = get_float(name, default)
            if not 0 < value <= 1:
                raise ConfigError(f"CARDVAULT_{name} must be > 0 and <= 1, got {value}")
            return value

        def get_duration(name: str, default: float) -> float:
            raw = source.get(f"CARDVAULT_{name}", "").strip()
            return parse_duration(raw) if raw else default

        raw_series = get("METRICS_TENANT_SERIES", UsageSettings.metrics_tenant_series).strip().lower()
        tenant_series = next((series for series in TENANT_SERIES if series == raw_series), None)
        if tenant_series is None:
            raise ConfigError(f"CARDVAULT_METRICS_TENANT_SERIES must be inline, separate or off, got {raw_series!r}")
        usage = UsageSettings(
            interval=get_duration("USAGE_INTERVAL", UsageSettings.interval),
            concurrency=get_int("USAGE_CONCURRENCY", UsageSettings.concurrency, 1),
            rescan_after=get_duration("USAGE_RESCAN_AFTER", UsageSettings.rescan_after),
            raw_retention=get_duration("USAGE_RAW_RETENTION", UsageSettings.raw_retention),
            hourly_retention=get_duration("USAGE_HOURLY_RETENTION", UsageSettings.hourly_retention),
            daily_retention=get_duration("USAGE_DAILY_RETENTION", UsageSettings.daily_retention),
            compact_interval=get_duration("USAGE_COMPACT_INTERVAL", UsageSettings.compact_interval),
            metrics_per_table=get("METRICS_PER_TABLE", "1").lower() not in ("0", "false", "no", "off"),
            metrics_tenant_series=tenant_series,
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
        billing = BillingSettings(
            provider=get("BILLING", BillingSettings.provider).lower(),
            stripe_api_key=get("STRIPE_API_KEY", ""),
            stripe_webhook_secret=get("STRIPE_WEBHOOK_SECRET", ""),
            stripe_api_base=get("STRIPE_API_BASE", "").rstrip("/"),
            grace=get_duration("BILLING_GRACE", BillingSettings.grace),
            on_cancel=get("BILLING_ON_CANCEL", BillingSettings.on_cancel).lower(),
            usage_interval=get_duration("BILLING_USAGE_INTERVAL", BillingSettings.usage_interval),
            overage_ceiling=get_float("OVERAGE_CEILING", BillingSettings.overage_ceiling),
        )
        _check_billing(billing)

        def get_bool(name: str, default: bool) -> bool:
            return get(name, "1" if default else "0").lower() not in ("0", "false", "no", "off")

        backups = BackupSettings(
            directory=get("BACKUP_DIR", ""),
            s3_bucket=get("BACKUP_S3_BUCKET", ""),
            s3_endpoint=get("BACKUP_S3_ENDPOINT", "").rstrip("/"),
            s3_region=get("BACKUP_S3_REGION", BackupSettings.s3_region),
            s3_access_key=get("BACKUP_S3_ACCESS_KEY", ""),
            s3_secret_key=get("BACKUP_S3_SECRET_KEY", ""),
            s3_prefix=get("BACKUP_S3_PREFIX", "").strip("/"),
            schedules=parse_backup_schedules(get("BACKUP_SCHEDULE", "")),
            interval=get_duration("BACKUP_INTERVAL", BackupSettings.interval),
            per_server_concurrency=get_int("BACKUP_CONCURRENCY", BackupSettings.per_server_concurrency, 1),
            verify_interval=get_duration("BACKUP_VERIFY_INTERVAL", BackupSettings.verify_interval),
            verify_sample=get_int("BACKUP_VERIFY_SAMPLE", BackupSettings.verify_sample, 0),
            rollback_window=get_duration("RESTORE_ROLLBACK_WINDOW", BackupSettings.rollback_window),
            stale_factor=get_float("BACKUP_STALE_FACTOR", BackupSettings.stale_factor),
        )
        if backups.stale_factor < 1.0:
            raise ConfigError(f"CARDVAULT_BACKUP_STALE_FACTOR must be >= 1, got {backups.stale_factor}")
        return cls(
            data_dir=Path(get("DATA_DIR", ".cardvault")),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            failpoints=get("FAILPOINTS", ""),
            multi_tenant=get_bool("MULTI_TENANT", True),
            default_tenant=get("DEFAULT_TENANT", "default").lower(),
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
                spare_databases=get_int("SPARE_DATABASES", defaults.spare_databases, 0),
            ),
            pools=PoolSettings(
                capacity=get_int("POOL_CAPACITY", PoolSettings.capacity, 1),
                connection_budget=get_int("CONNECTION_BUDGET", PoolSettings.connection_budget, 1),
                per_tenant_max=get_int("POOL_MAX_SIZE", PoolSettings.per_tenant_max, 1),
                idle_timeout=get_duration("POOL_IDLE_TIMEOUT", PoolSettings.idle_timeout),
                acquire_timeout=get_duration("POOL_TIMEOUT", PoolSettings.acquire_timeout),
                check_after_idle=get_duration("POOL_CHECK_AFTER", PoolSettings.check_after_idle),
            ),
            replicas=ReplicaSettings(
                max_lag=get_duration("REPLICA_MAX_LAG", ReplicaSettings.max_lag),
                check_interval=get_duration("REPLICA_CHECK_INTERVAL", ReplicaSettings.check_interval),
            ),
            http=HttpSettings(
                host=get("HOST", HttpSettings.host),
                port=get_int("PORT", HttpSettings.port, 1),
                base_domain=get("BASE_DOMAIN", "").lower().strip("."),
                max_image_bytes=get_int("MAX_IMAGE_BYTES", HttpSettings.max_image_bytes, 1),
                trusted_proxies=parse_trusted_proxies(get("TRUSTED_PROXIES", "")),
                public_url=get("PUBLIC_URL", ""),
            ),
            security=SecuritySettings(
                secret_key=get("SECRET_KEY", ""),
                admin_token=get("ADMIN_TOKEN", ""),
                metrics_token=get("METRICS_TOKEN", ""),
                previous_secret_keys=tuple(
                    key for key in (part.strip() for part in get("SECRET_KEY_PREVIOUS", "").split(",")) if key
                ),
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
            billing=billing,
            mail=MailSettings(
                smtp_url=get("SMTP_URL", ""),
                sender=get("MAIL_FROM", MailSettings.sender),
                interval=get_duration("MAIL_INTERVAL", MailSettings.interval),
            ),
            signup=SignupSettings(
                enabled=get("SIGNUP", "1").lower() not in ("0", "false", "no", "off"),
                per_address_per_hour=get_int("SIGNUP_RATE", SignupSettings.per_address_per_hour, 1),
                verify_ttl=get_duration("VERIFY_TTL", SignupSettings.verify_ttl),
            ),
            backups=backups,
            moves=MoveSettings(
                sync_timeout=get_duration("MOVE_SYNC_TIMEOUT", MoveSettings.sync_timeout),
                freeze_timeout=get_duration("MOVE_FREEZE_TIMEOUT", MoveSettings.freeze_timeout),
                server_max_tenants=get_int("SERVER_MAX_TENANTS", MoveSettings.server_max_tenants, 0),
                server_capacity_bytes=get_int("SERVER_CAPACITY_BYTES", MoveSettings.server_capacity_bytes, 0),
                server_full_ratio=get_ratio("SERVER_FULL_RATIO", MoveSettings.server_full_ratio),
                server_fill_horizon_days=get_int("SERVER_FILL_HORIZON_DAYS", MoveSettings.server_fill_horizon_days, 1),
            ),
            privacy=PrivacySettings(
                export_ttl=get_duration("EXPORT_TTL", PrivacySettings.export_ttl),
                audit_retention=get_duration("AUDIT_RETENTION", PrivacySettings.audit_retention),
                hygiene_interval=get_duration("HYGIENE_INTERVAL", PrivacySettings.hygiene_interval),
                quarantine_grace=get_duration("QUARANTINE_GRACE", PrivacySettings.quarantine_grace),
            ),
            tasks=TaskQueueSettings(
                worker=get_bool("WORKER", TaskQueueSettings.worker),
                concurrency=get_int("WORKER_CONCURRENCY", TaskQueueSettings.concurrency, 1),
                heartbeat=get_duration("WORKER_HEARTBEAT", TaskQueueSettings.heartbeat),
                stalled_after=get_duration("WORKER_STALLED_AFTER", TaskQueueSettings.stalled_after),
            ),
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with top-level fields replaced (settings are immutable)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
