"""All SQL on ``tenants`` and ``tenant_quotas``. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.errors import SlugTaken
from controlplane.registry.models import Quota, QuotaType, Tenant, TenantStatus, Tier

_TENANT_COLUMNS = sql.SQL(
    """t.id, t.slug, t.name, t.status, t.subscription_tier, t.max_users, t.server_id, s.name AS server_name,
       t.database_name, t.role_name, t.schema_revision, t.migration_error, t.created_at, t.updated_at,
       t.suspended_at, t.delete_after"""
)
_FROM = sql.SQL("FROM tenants t JOIN db_servers s ON s.id = t.server_id")


def _tenant(row: Mapping[str, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        slug=row["slug"],
        name=row["name"],
        status=TenantStatus(row["status"]),
        subscription_tier=Tier(row["subscription_tier"]),
        max_users=row["max_users"],
        server_id=row["server_id"],
        server_name=row["server_name"],
        database_name=row["database_name"],
        role_name=row["role_name"],
        schema_revision=row["schema_revision"],
        migration_error=row["migration_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        suspended_at=row["suspended_at"],
        delete_after=row["delete_after"],
    )


async def insert_tenant(
    conn: AsyncConn,
    *,
    tenant_id: uuid.UUID,
    slug: str,
    name: str,
    tier: Tier,
    max_users: int | None,
    server_id: uuid.UUID,
    database_name: str,
    role_name: str,
    role_password_encrypted: str,
) -> None:
    """Insert a tenant in status ``provisioning``; a taken slug raises ``SlugTaken``."""
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO tenants (id, slug, name, status, subscription_tier, max_users, server_id,
                                     database_name, role_name, role_password_encrypted)
                VALUES (%s, %s, %s, 'provisioning', %s, %s, %s, %s, %s, %s)
                """,
                (tenant_id, slug, name, tier.value, max_users, server_id, database_name, role_name,
                 role_password_encrypted),
            )  # fmt: skip
    except psycopg.errors.UniqueViolation:
        raise SlugTaken(f"slug {slug!r} is already taken", slug=slug) from None


async def get_by_slug(conn: AsyncConn, slug: str) -> Tenant | None:
    cur = await conn.execute(sql.SQL("SELECT {} {} WHERE t.slug = %s").format(_TENANT_COLUMNS, _FROM), (slug,))
    row = await cur.fetchone()
    return _tenant(row) if row else None


async def get_by_id(conn: AsyncConn, tenant_id: uuid.UUID) -> Tenant | None:
    cur = await conn.execute(sql.SQL("SELECT {} {} WHERE t.id = %s").format(_TENANT_COLUMNS, _FROM), (tenant_id,))
    row = await cur.fetchone()
    return _tenant(row) if row else None


async def role_password_encrypted(conn: AsyncConn, tenant_id: uuid.UUID) -> str | None:
    cur = await conn.execute("SELECT role_password_encrypted FROM tenants WHERE id = %s", (tenant_id,))
    row = await cur.fetchone()
    return str(row["role_password_encrypted"]) if row else None


async def list_tenants(
    conn: AsyncConn,
    *,
    status: TenantStatus | None = None,
    tier: Tier | None = None,
    server_id: uuid.UUID | None = None,
    after_slug: str | None = None,
    limit: int | None = None,
) -> list[Tenant]:
    """Tenants ordered by slug, filtered; ``after_slug`` is the keyset cursor."""
    where: list[sql.Composable] = [sql.SQL("TRUE")]
    params: list[Any] = []
    for column, value in (("t.status", status), ("t.subscription_tier", tier), ("t.server_id", server_id)):
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.SQL(column)))
            params.append(value.value if isinstance(value, TenantStatus | Tier) else value)
    if after_slug is not None:
        where.append(sql.SQL("t.slug > %s"))
        params.append(after_slug)
    query = sql.SQL("SELECT {} {} WHERE {} ORDER BY t.slug").format(
        _TENANT_COLUMNS, _FROM, sql.SQL(" AND ").join(where)
    )
    if limit is not None:
        query = sql.SQL("{} LIMIT %s").format(query)
        params.append(limit)
    cur = await conn.execute(query, params)
    return [_tenant(row) for row in await cur.fetchall()]


async def lock_for_update(conn: AsyncConn, tenant_id: uuid.UUID) -> Tenant | None:
    """The tenant row, locked until the caller's transaction ends."""
    cur = await conn.execute(
        sql.SQL("SELECT {} {} WHERE t.id = %s FOR UPDATE OF t").format(_TENANT_COLUMNS, _FROM), (tenant_id,)
    )
    row = await cur.fetchone()
    return _tenant(row) if row else None


async def set_status(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    status: TenantStatus,
    *,
    suspended_at: datetime | None = None,
    delete_after: datetime | None = None,
    schema_revision: str | None = None,
) -> None:
    await conn.execute(
        """
        UPDATE tenants
           SET status = %s, suspended_at = %s, delete_after = %s,
               schema_revision = COALESCE(%s, schema_revision), updated_at = now()
         WHERE id = %s
        """,
        (status.value, suspended_at, delete_after, schema_revision, tenant_id),
    )


async def update_fields(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    *,
    slug: str | None = None,
    name: str | None = None,
    tier: Tier | None = None,
    max_users: int | None = None,
) -> None:
    """Change slug, name or tier; a taken slug raises ``SlugTaken``."""
    try:
        async with conn.transaction():
            await conn.execute(
                """
                UPDATE tenants
                   SET slug = COALESCE(%s, slug), name = COALESCE(%s, name),
                       subscription_tier = COALESCE(%s, subscription_tier),
                       max_users = CASE WHEN %s THEN %s ELSE max_users END, updated_at = now()
                 WHERE id = %s
                """,
                (slug, name, tier.value if tier else None, tier is not None, max_users, tenant_id),
            )
    except psycopg.errors.UniqueViolation:
        raise SlugTaken(f"slug {slug!r} is already taken", slug=slug) from None


async def delete_tenant(conn: AsyncConn, tenant_id: uuid.UUID) -> None:
    """Remove the row (quotas and usage cascade; the operations ledger stays)."""
    await conn.execute("DELETE FROM tenants WHERE id = %s", (tenant_id,))


async def set_quotas(conn: AsyncConn, tenant_id: uuid.UUID, limits: Mapping[QuotaType, int | None]) -> None:
    """Write the limits, keeping the measured usage of quotas that already exist."""
    await conn.cursor().executemany(
        """
        INSERT INTO tenant_quotas (tenant_id, quota_type, quota_limit) VALUES (%s, %s, %s)
        ON CONFLICT (tenant_id, quota_type)
        DO UPDATE SET quota_limit = EXCLUDED.quota_limit, updated_at = now()
        """,
        [(tenant_id, quota.value, limit) for quota, limit in limits.items()],
    )


async def get_quotas(conn: AsyncConn, tenant_id: uuid.UUID) -> list[Quota]:
    cur = await conn.execute(
        "SELECT quota_type, quota_limit, current_usage FROM tenant_quotas WHERE tenant_id = %s ORDER BY 1",
        (tenant_id,),
    )
    return [Quota(QuotaType(r["quota_type"]), r["quota_limit"], r["current_usage"]) for r in await cur.fetchall()]


async def get_quota_limit(conn: AsyncConn, tenant_id: uuid.UUID, quota: QuotaType) -> int | None:
    """One limit (None: unlimited, or no such quota row)."""
    cur = await conn.execute(
        "SELECT quota_limit FROM tenant_quotas WHERE tenant_id = %s AND quota_type = %s", (tenant_id, quota.value)
    )
    row = await cur.fetchone()
    return int(row["quota_limit"]) if row and row["quota_limit"] is not None else None


async def set_migration_result(
    conn: AsyncConn, tenant_id: uuid.UUID, *, revision: str | None, error: str | None
) -> None:
    """Record one tenant's migration outcome (revision unchanged when it failed)."""
    await conn.execute(
        """
        UPDATE tenants SET schema_revision = COALESCE(%s, schema_revision), migration_error = %s,
                           updated_at = now()
         WHERE id = %s
        """,
        (revision, error, tenant_id),
    )


async def revision_counts(conn: AsyncConn) -> list[dict[str, Any]]:
    """Tenants per schema revision, with how many of them failed their last migration."""
    cur = await conn.execute(
        """
        SELECT schema_revision AS revision, count(*) AS tenants,
               count(*) FILTER (WHERE migration_error IS NOT NULL) AS failed
          FROM tenants
         WHERE status <> 'provisioning'
         GROUP BY schema_revision ORDER BY schema_revision NULLS FIRST
        """
    )
    return list(await cur.fetchall())


async def failed_migrations(conn: AsyncConn) -> list[Tenant]:
    cur = await conn.execute(
        sql.SQL("SELECT {} {} WHERE t.migration_error IS NOT NULL ORDER BY t.slug").format(_TENANT_COLUMNS, _FROM)
    )
    return [_tenant(row) for row in await cur.fetchall()]
