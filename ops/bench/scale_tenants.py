"""Registry rows of the scale benchmark (``scale.py``): tenants that exist only in the control database.

Each registered tenant is a copy of one real, provisioned and collected tenant (``like``) as the registry
holds it: its ``tenants`` row (same server, tier, status and encrypted role password; its own id, slug and
database name, a database that does not exist), its quota rows, its last usage scan (the real tenant's
per-table sizes and counters, so ``/metrics`` carries the same per-tenant and per-table series a real
tenant would) and its stored-files usage. As ``pages.py`` does for the dashboard, a few set-based
statements insert any number of them; ``register`` adds to what is there, so one run climbs N step by
step. Nothing here touches a tenant database.
"""

from __future__ import annotations

import time
import uuid

import psycopg

#: Slugs ``reg<run>-<n>``; the database name is derived from the id, as provisioning names it.
_TENANTS = """
    INSERT INTO tenants (id, name, slug, status, subscription_tier, server_id, database_name, role_name,
                         role_password_encrypted, created_at)
    SELECT s.id, 'Registered ' || s.n, %(prefix)s::text || s.n, l.status, l.subscription_tier, l.server_id,
           't_' || replace(s.id::text, '-', ''), 't_' || replace(s.id::text, '-', ''), l.role_password_encrypted,
           now() - make_interval(days => s.n %% 400)
      FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(%(first)s::int, %(last)s::int) n) s
     CROSS JOIN (SELECT * FROM tenants WHERE id = %(like)s) l
"""
_QUOTAS = """
    INSERT INTO tenant_quotas (tenant_id, quota_type, quota_limit, current_usage)
    SELECT t.id, q.quota_type, q.quota_limit, q.current_usage
      FROM tenants t CROSS JOIN (SELECT * FROM tenant_quotas WHERE tenant_id = %(like)s) q
     WHERE t.slug LIKE %(pattern)s
       AND NOT EXISTS (SELECT 1 FROM tenant_quotas o WHERE o.tenant_id = t.id)
"""
_SCANS = """
    INSERT INTO tenant_usage_scans (tenant_id, database_bytes, tables, counters, scanned_at)
    SELECT t.id, s.database_bytes, s.tables, s.counters, s.scanned_at
      FROM tenants t CROSS JOIN (SELECT * FROM tenant_usage_scans WHERE tenant_id = %(like)s) s
     WHERE t.slug LIKE %(pattern)s
       AND NOT EXISTS (SELECT 1 FROM tenant_usage_scans o WHERE o.tenant_id = t.id)
"""
_STORAGE = """
    INSERT INTO tenant_storage_usage (tenant_id, storage_type, bytes_used, file_count)
    SELECT t.id, s.storage_type, s.bytes_used, s.file_count
      FROM tenants t CROSS JOIN (SELECT * FROM tenant_storage_usage WHERE tenant_id = %(like)s) s
     WHERE t.slug LIKE %(pattern)s
       AND NOT EXISTS (SELECT 1 FROM tenant_storage_usage o WHERE o.tenant_id = t.id)
"""


class Registered:
    """The registry-only tenants of one run, added up to a given count."""

    def __init__(self, control_dsn: str, run_id: str, like: uuid.UUID) -> None:
        self.control_dsn = control_dsn
        self.prefix = f"reg{run_id}-"
        self.like = like
        self.count = 0

    def slug(self, n: int) -> str:
        """Slug of the ``n``-th registered tenant (1-based)."""
        return f"{self.prefix}{n}"

    def grow_to(self, total: int) -> float:
        """Register tenants until there are ``total``; the seconds it took."""
        if total <= self.count:
            return 0.0
        started = time.perf_counter()
        params = {
            "prefix": self.prefix,
            "pattern": self.prefix + "%",
            "first": self.count + 1,
            "last": total,
            "like": self.like,
        }
        with psycopg.connect(self.control_dsn, autocommit=True) as conn:
            with conn.transaction():
                for statement in (_TENANTS, _QUOTAS, _SCANS, _STORAGE):
                    conn.execute(statement, params)
            conn.execute("ANALYZE tenants, tenant_quotas, tenant_usage_scans, tenant_storage_usage")
        self.count = total
        return time.perf_counter() - started
