"""What the spare-database tests look at: the ``spare_databases`` rows, the ``cvspare_*`` objects on the
server and the OIDs that prove a tenant database *is* a former spare (renamed, not cloned). All read
through fresh psycopg connections, never through the code under test."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import sql

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.tenant_support import execute, fetch

Row = dict[str, Any]


def with_spares(settings: Settings, count: int, **provisioning: Any) -> Settings:
    """``settings`` keeping ``count`` spare databases per server."""
    return dataclasses.replace(
        settings, provisioning=dataclasses.replace(settings.provisioning, spare_databases=count, **provisioning)
    )


@asynccontextmanager
async def spare_service(
    settings: Settings, count: int, **provisioning: Any
) -> AsyncIterator[tuple[Platform, TenantService]]:
    """A platform and its tenant service keeping ``count`` spares per server."""
    async with Platform.open(with_spares(settings, count, **provisioning), migrate=False) as platform:
        yield platform, TenantService(platform)


async def spare_rows(control_dsn: str) -> list[Row]:
    return await fetch(control_dsn, "SELECT * FROM spare_databases ORDER BY created_at, database_name")


async def ready_spares(control_dsn: str) -> list[str]:
    rows = await spare_rows(control_dsn)
    return [r["database_name"] for r in rows if r["state"] == "ready"]


async def spare_objects(admin_dsn: str) -> set[str]:
    """Every ``cvspare_*`` database and role on the server, as ``database:<name>`` / ``role:<name>``."""
    rows = await fetch(
        admin_dsn,
        "SELECT 'database:' || datname AS o FROM pg_database WHERE datname LIKE %s"
        " UNION ALL SELECT 'role:' || rolname FROM pg_roles WHERE rolname LIKE %s",
        ("cvspare\\_%", "cvspare\\_%"),
    )
    return {r["o"] for r in rows}


def objects_of(names: list[str] | set[str]) -> set[str]:
    """The ``spare_objects`` entries of spares named ``names`` (database and role share the name)."""
    return {f"{kind}:{name}" for name in names for kind in ("database", "role")}


async def oids(admin_dsn: str, name: str) -> tuple[int | None, int | None]:
    """(database OID, role OID) of the database and role called ``name`` (None where there is none)."""
    rows = await fetch(
        admin_dsn,
        "SELECT (SELECT oid FROM pg_database WHERE datname = %s)::bigint AS db,"
        " (SELECT oid FROM pg_roles WHERE rolname = %s)::bigint AS role",
        (name, name),
    )
    return rows[0]["db"], rows[0]["role"]


async def claimed_spare(control_dsn: str, tenant_id: uuid.UUID) -> str | None:
    """The spare the tenant's provisioning recorded as claimed, if any."""
    rows = await fetch(
        control_dsn,
        "SELECT params -> 'spare' ->> 'name' AS name FROM tenant_operations"
        " WHERE tenant_id = %s AND kind = 'provision'",
        (tenant_id,),
    )
    return rows[0]["name"] if rows else None


async def step_names(control_dsn: str, tenant_id: uuid.UUID) -> list[str]:
    rows = await fetch(
        control_dsn, "SELECT steps FROM tenant_operations WHERE tenant_id = %s AND kind = 'provision'", (tenant_id,)
    )
    return [s["step"] for s in rows[0]["steps"]]


async def own_tag(control_dsn: str) -> str:
    """This control plane's spare tag (as ``spares_repository.pool_tag`` computes it)."""
    from controlplane.provisioning.spares_repository import spare_tag

    rows = await fetch(
        control_dsn,
        "SELECT seed, (SELECT oid FROM pg_database WHERE datname = current_database())::bigint AS oid FROM spare_pool",
    )
    return spare_tag(rows[0]["seed"], rows[0]["oid"])


async def make_spare_by_hand(admin_dsn: str, name: str, template: str | None = None) -> None:
    """A database (closed to PUBLIC) and login role called ``name``, made outside the control plane: a
    leak, another control plane's spare."""
    ident = sql.Identifier(name)
    query = sql.SQL("CREATE DATABASE {}").format(ident)
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    await execute(admin_dsn, query)
    await execute(admin_dsn, sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
    await execute(admin_dsn, sql.SQL("CREATE ROLE {} LOGIN").format(ident))


async def drop_by_hand(admin_dsn: str, name: str) -> None:
    await execute(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    await execute(admin_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
