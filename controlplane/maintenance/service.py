"""Keeping tenant databases healthy: health checks, slow queries, and VACUUM / ANALYZE.

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

import msgspec
import psycopg

from controlplane import db
from controlplane.errors import TenantNotFound
from controlplane.maintenance import repository
from controlplane.maintenance.models import (
    ExtensionMissing,
    FleetHealth,
    Health,
    Maintenance,
    MaintenanceResult,
    SlowQuery,
)
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.routing.cache import TenantCache


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
            await repository.ping(conn)
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
        installed, loaded = await repository.stat_statements_state(conn)
        if loaded and not installed:
            await repository.install_stat_statements(conn)
        elif not installed:
            raise ExtensionMissing(
                "pg_stat_statements is not installed on this tenant's server: add it to "
                "shared_preload_libraries, restart, and CREATE EXTENSION pg_stat_statements in its "
                "maintenance database",
                server=tenant.server_name,
            )
        try:
            rows = await repository.top_statements(conn, tenant.database_name, limit)
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:  # installed but not preloaded
            raise ExtensionMissing(
                f"pg_stat_statements is installed but not loaded: {exc.diag.message_primary}",
                server=tenant.server_name,
            ) from None
    return [msgspec.convert(r, SlowQuery) for r in rows]


async def maintain(
    platform: Platform, tenants: Sequence[Tenant], action: Maintenance, *, concurrency: int
) -> list[MaintenanceResult]:
    """``action`` on every tenant database, at most ``concurrency`` at once; failures are results."""
    gate = asyncio.Semaphore(concurrency)

    async def one(tenant: Tenant) -> MaintenanceResult:
        async with gate:
            started = time.perf_counter()
            try:
                async with platform.control.connection() as control:
                    dsn = await platform.fleet.dsn(control, tenant.server_id)
                async with db.connect(
                    dsn, platform.settings.database, dbname=tenant.database_name, role="maintenance"
                ) as conn:
                    await repository.run_maintenance(conn, action)
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
