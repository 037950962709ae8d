"""Operations data about tenant databases: health checks, slow queries, and VACUUM / ANALYZE.

- ``check_health``: a fresh connection *as the tenant's own role* (what a request would need) and a
  trivial query, both timed. Never through the request pools, so a check neither hides a broken
  login behind a pooled connection nor takes a slot from traffic. ``HealthMonitor`` checks every
  active tenant, a bounded number at once, as a leader job; ``/metrics`` exposes its last round.
- ``slow_queries``: the tenant's top statements by total time from ``pg_stat_statements`` on its
  server, when the extension is loaded there (a clear 409 saying how to enable it when not).
- ``maintain``: ``VACUUM (ANALYZE)`` or ``ANALYZE`` of tenant databases with bounded concurrency,
  each on a short-lived management connection, one outcome per tenant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import psycopg

from controlplane import db
from controlplane.errors import Conflict, TenantNotFound
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.routing.cache import TenantCache
from controlplane.usage.models import FleetHealth, Health

Maintenance = Literal["analyze", "vacuum"]


class ExtensionMissing(Conflict):
    code = "extension_missing"


class SlowQuery(msgspec.Struct, frozen=True, kw_only=True):
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int


class MaintenanceResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    action: str
    ok: bool
    seconds: float
    error: str | None = None


async def check_health(platform: Platform, cache: TenantCache, tenant: Tenant) -> Health:
    """Connect as the tenant's role and run ``SELECT 1``; either step's failure is reported, not raised."""
    started = time.perf_counter()
    try:
        dsn = await cache.credentials(tenant.id)  # TenantNotFound if it was purged meanwhile
        conn = await psycopg.AsyncConnection.connect(
            db.management_conninfo(dsn, platform.settings.database, role="health"), autocommit=True
        )
    except (psycopg.Error, OSError, TenantNotFound) as exc:
        return Health(tenant=tenant.slug, ok=False, connect_ms=None, query_ms=None, error=str(exc).strip())
    connected = time.perf_counter()
    try:
        async with conn:
            await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        ms = (connected - started) * 1000
        return Health(tenant=tenant.slug, ok=False, connect_ms=ms, query_ms=None, error=str(exc).strip())
    done = time.perf_counter()
    return Health(
        tenant=tenant.slug, ok=True, connect_ms=(connected - started) * 1000, query_ms=(done - connected) * 1000
    )


class HealthMonitor:
    """Health checks of every active tenant, ``concurrency`` at a time; ``latest`` is the last round."""

    def __init__(self, platform: Platform, cache: TenantCache, *, concurrency: int) -> None:
        self._platform = platform
        self._cache = cache
        self._gate = asyncio.Semaphore(concurrency)
        #: The last finished round (None: none yet on this instance).
        self.latest: FleetHealth | None = None

    async def check(self) -> FleetHealth:
        async with self._platform.control.connection() as conn:
            active = await registry.list_tenants(conn, status=TenantStatus.ACTIVE)
        started = time.perf_counter()

        async def one(tenant: Tenant) -> Health:
            async with self._gate:
                return await check_health(self._platform, self._cache, tenant)

        results = tuple(await asyncio.gather(*(one(t) for t in active)))
        self.latest = FleetHealth(
            finished_at=datetime.now(UTC), duration_seconds=time.perf_counter() - started, results=results
        )
        return self.latest

    async def job(self) -> str:
        round_ = await self.check()
        failed = [h.tenant for h in round_.results if not h.ok]
        named = f" ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''})" if failed else ""
        return f"{len(round_.results)} tenant(s) checked, {len(failed)} unhealthy{named}"


async def slow_queries(platform: Platform, tenant: Tenant, limit: int) -> list[SlowQuery]:
    """The tenant database's statements with the most total execution time."""
    async with platform.control.connection() as control, platform.fleet.admin(control, tenant.server_id) as conn:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements') AS installed,"
            " 'pg_stat_statements' = ANY(regexp_split_to_array("
            "     current_setting('shared_preload_libraries'), '\\s*,\\s*')) AS loaded"
        )
        state = await cur.fetchone()
        assert state is not None
        if state["loaded"] and not state["installed"]:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        elif not state["installed"]:
            raise ExtensionMissing(
                "pg_stat_statements is not installed on this tenant's server: add it to "
                "shared_preload_libraries, restart, and CREATE EXTENSION pg_stat_statements in its "
                "maintenance database",
                server=tenant.server_name,
            )
        try:
            cur = await conn.execute(
                "SELECT s.query, s.calls, s.total_exec_time AS total_ms, s.mean_exec_time AS mean_ms, s.rows"
                " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = %s ORDER BY s.total_exec_time DESC LIMIT %s",
                (tenant.database_name, limit),
            )
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:  # installed but not preloaded
            raise ExtensionMissing(
                f"pg_stat_statements is installed but not loaded: {exc.diag.message_primary}",
                server=tenant.server_name,
            ) from None
        rows: list[dict[str, Any]] = await cur.fetchall()
    return [msgspec.convert(r, SlowQuery) for r in rows]


async def maintain(
    platform: Platform, tenants: Sequence[Tenant], action: Maintenance, *, concurrency: int
) -> list[MaintenanceResult]:
    """``action`` on every tenant database, at most ``concurrency`` at once; failures are results."""
    gate = asyncio.Semaphore(concurrency)
    statement = "VACUUM (ANALYZE)" if action == "vacuum" else "ANALYZE"

    async def one(tenant: Tenant) -> MaintenanceResult:
        async with gate:
            started = time.perf_counter()
            try:
                async with platform.control.connection() as control:
                    dsn = await platform.fleet.dsn(control, tenant.server_id)
                async with db.connect(
                    dsn, platform.settings.database, dbname=tenant.database_name, role="maintenance"
                ) as conn:
                    await conn.execute("SET statement_timeout = 0")
                    await conn.execute(statement)
            except Exception as exc:  # one tenant's failure is its result, the others go on
                seconds = time.perf_counter() - started
                return MaintenanceResult(tenant=tenant.slug, action=action, ok=False, seconds=seconds, error=str(exc))
            return MaintenanceResult(tenant=tenant.slug, action=action, ok=True, seconds=time.perf_counter() - started)

    return list(await asyncio.gather(*(one(t) for t in tenants)))


def maintenance_hour(tenant: Tenant) -> int:
    """The UTC hour of the tenant's daily maintenance window: spread over the day by tenant id."""
    return tenant.id.int % 24


async def run_maintenance_window(platform: Platform, hour: int, *, concurrency: int) -> list[MaintenanceResult]:
    """``VACUUM (ANALYZE)`` every active tenant whose window is ``hour`` (a leader job, run hourly)."""
    async with platform.control.connection() as conn:
        active = await registry.list_tenants(conn, status=TenantStatus.ACTIVE)
    due = [t for t in active if maintenance_hour(t) == hour]
    return await maintain(platform, due, "vacuum", concurrency=concurrency)
