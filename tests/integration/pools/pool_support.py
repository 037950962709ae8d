"""Helpers of the pool tests: their tenants (plain databases with their own login role), the ``Directory``
that maps tenant ids to DSNs, and what the server sees, read from ``pg_stat_activity``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import conninfo, sql

from controlplane.errors import TenantNotFound
from controlplane.pools.models import APPLICATION_NAME
from controlplane.pools.service import TenantPools

MODULE_TENANTS = 8


@dataclasses.dataclass(frozen=True)
class TenantDb:
    id: uuid.UUID
    name: str  # database and role
    dsn: str  # as the tenant's own role


def create_tenant_db(admin_dsn: str) -> TenantDb:
    name = f"cvpool_{uuid.uuid4().hex[:16]}"
    password = uuid.uuid4().hex
    ident = sql.Identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident, ident))
    dsn = conninfo.make_conninfo(admin_dsn, dbname=name, user=name, password=password)
    return TenantDb(uuid.uuid4(), name, dsn)


def drop_tenant_db(admin_dsn: str, tenant: TenantDb) -> None:
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(admin_dsn, autocommit=True) as conn:
        ident = sql.Identifier(tenant.name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


class Directory:
    """``conninfo_for``: tenant id -> DSN, counting calls; an unknown id is TenantNotFound."""

    def __init__(self, tenants: list[TenantDb], delay: float = 0.0) -> None:
        self.dsns = {t.id: t.dsn for t in tenants}
        self.calls: Counter[uuid.UUID] = Counter()
        self.delay = delay
        self.looked_up = asyncio.Event()

    async def __call__(self, tenant_id: uuid.UUID) -> str:
        self.calls[tenant_id] += 1
        self.looked_up.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            return self.dsns[tenant_id]
        except KeyError:
            raise TenantNotFound(f"no tenant {tenant_id}") from None


MakePools = Callable[..., TenantPools]


async def server_connections(admin_dsn: str, tenants: list[TenantDb]) -> list[dict[str, Any]]:
    """Our tenant sessions on the server (application_name and database)."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cur.execute(
            "SELECT pid, datname FROM pg_stat_activity WHERE application_name = %s AND datname = ANY(%s)",
            (APPLICATION_NAME, [t.name for t in tenants]),
        )
        return await cur.fetchall()


async def count_connections(admin_dsn: str, tenants: list[TenantDb]) -> int:
    return len(await server_connections(admin_dsn, tenants))


async def backend_pid(pools: TenantPools, tenant: TenantDb) -> int:
    async with pools.connection(tenant.id) as conn:
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cur.fetchone()
        assert row is not None
        return int(row["pid"])
