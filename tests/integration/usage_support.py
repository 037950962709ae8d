"""Helpers of the usage collector tests: tenant data written straight into tenant databases, history rows read back."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from controlplane import db
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from tests.integration.tenant_support import execute, fetch


def tenant_db(admin_dsn: str, tenant: Tenant) -> str:
    return db.with_database(admin_dsn, tenant.database_name)


async def add_cards(admin_dsn: str, tenant: Tenant, count: int, *, note_bytes: int = 0) -> None:
    """``count`` cards, each with ``note_bytes`` of incompressible notes (random hex)."""
    await execute(
        tenant_db(admin_dsn, tenant),
        """
        INSERT INTO cards (cardnumber, year, notes)
        SELECT 'c' || g, 1990, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, %s / 32) i)
          FROM generate_series(1, %s) g
        """,
        (note_bytes, count),
    )


async def add_users(admin_dsn: str, tenant: Tenant, count: int) -> None:
    await execute(
        tenant_db(admin_dsn, tenant),
        "INSERT INTO users (email, password_hash) SELECT 'u' || g || '@x.test', 'h' FROM generate_series(1, %s) g",
        (count,),
    )


async def add_files(admin_dsn: str, tenant: Tenant, files: list[tuple[str, int]]) -> None:
    """``files`` rows of (kind, bytes)."""
    async with await psycopg.AsyncConnection.connect(tenant_db(admin_dsn, tenant), autocommit=True) as conn:
        for kind, size in files:
            await conn.execute(
                "INSERT INTO files (key, content_type, bytes, sha256, kind) VALUES (%s, 'image/png', %s, %s, %s)",
                (uuid.uuid4().hex, size, "0" * 64, kind),
            )


async def analyze(admin_dsn: str, *tenants: Tenant) -> None:
    for tenant in tenants:
        await execute(tenant_db(admin_dsn, tenant), "ANALYZE")


async def database_size(admin_dsn: str, tenant: Tenant) -> int:
    (row,) = await fetch(admin_dsn, "SELECT pg_database_size(%s) AS bytes", (tenant.database_name,))
    return int(row["bytes"])


async def create_tenants(service: TenantService, *slugs: str) -> list[Tenant]:
    return [await service.create(name=slug, slug=slug, tier="professional") for slug in slugs]


async def metric_rows(control_dsn: str, tenant: Tenant) -> list[dict[str, Any]]:
    return await fetch(
        control_dsn,
        "SELECT metric_name, metric_value, recorded_at FROM tenant_usage_metrics WHERE tenant_id = %s"
        " ORDER BY recorded_at, metric_name",
        (tenant.id,),
    )


class CountingConnection:
    """A real (pooled) admin connection that records every statement executed through it."""

    def __init__(self, conn: db.AsyncConn, statements: list[str]) -> None:
        self._conn = conn
        self._statements = statements

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self._statements.append(query if isinstance(query, str) else query.as_string(self._conn))
        return await self._conn.execute(query, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
