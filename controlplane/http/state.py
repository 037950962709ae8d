"""The names the HTTP layer shares: ``app.state`` keys, the tenant path parameter and header.

The app's lifespan puts the long-lived objects into ``app.state`` under these keys; route modules and
the tenant API wiring read them from there. Only strings live here (no imports), so any route module
may use them whatever it presents.
"""

from __future__ import annotations

#: The ``Platform`` (control pool, fleet, settings) and the ``TenantService``; also the names of the
#: app-wide dependencies ``platform`` and ``tenants``.
PLATFORM_STATE_KEY = "platform"
TENANTS_STATE_KEY = "tenants"
#: The ``TenantCache`` (registry cache) and the ``TenantPools``.
TENANT_CACHE_STATE_KEY = "tenant_cache"
TENANT_POOLS_STATE_KEY = "tenant_pools"
#: How a tenant API request opens its ``CardVault`` (``cards.routes.Vaults``).
VAULTS_STATE_KEY = "vaults"
#: The base domain of ``{slug}.{base_domain}`` hosts (None: no subdomain routing).
BASE_DOMAIN_STATE_KEY = "base_domain"
#: The ``Authenticator``.
AUTH_STATE_KEY = "auth"
#: The ``ApiCalls`` meter (hourly limit and usage count of tenant API calls).
API_CALLS_STATE_KEY = "api_calls"
#: The ``UsageService`` and the ``QuotaAlerts``.
USAGE_STATE_KEY = "usage"
QUOTA_ALERTS_STATE_KEY = "quota_alerts"
#: The ``Signups`` behind ``/signup`` and the outbox's ``MailSender``.
SIGNUPS_STATE_KEY = "signups"
MAIL_STATE_KEY = "mail"
#: The ``BillingService`` (tenant plans at the provider) and the webhook ``Inbox``.
BILLING_STATE_KEY = "billing"
BILLING_INBOX_STATE_KEY = "billing_inbox"
#: The ``BackupService`` (per-tenant backups).
BACKUPS_STATE_KEY = "backups"
#: The ``CardVaultMetrics`` that ``/metrics`` renders.
METRICS_STATE_KEY = "metrics"
#: The ``StorageHygiene`` (orphaned and missing files) and the ``BytesServed`` meter (image bytes sent).
HYGIENE_STATE_KEY = "hygiene"
BYTES_SERVED_STATE_KEY = "bytes_served"
#: The ``TenantRequests`` recorder (per-tenant request classes and latency, flushed hourly rows).
TENANT_REQUESTS_STATE_KEY = "tenant_requests"
#: The ``Privacy`` service: exports, erasures, deletion certificates, audit retention.
PRIVACY_STATE_KEY = "privacy"
#: The ``RestoreService`` (restores, rollbacks, verifications, their upkeep).
RESTORES_STATE_KEY = "restores"
#: The ``Sso`` service (enterprise single sign-on: settings, sign-in flow, the password-login switch).
SSO_STATE_KEY = "sso"
#: The task queue as drains and rebalances use it (``controlplane.moves.fleet_models.MoveQueue``).
MOVE_QUEUE_STATE_KEY = "move_queue"
#: SHA-256 of CARDVAULT_ADMIN_TOKEN and of CARDVAULT_METRICS_TOKEN (None: no such token).
ADMIN_TOKEN_HASH_STATE_KEY = "admin_token_sha256"
METRICS_TOKEN_HASH_STATE_KEY = "metrics_token_sha256"

#: Path parameter that carries the slug in ``/t/{tenant_slug:str}/...``.
TENANT_SLUG_PARAM = "tenant_slug"
#: Header that names the tenant with ``/api/...`` and ``/auth/...``.
TENANT_HEADER = "x-tenant"
