"""Usage collection (controlplane/usage) against a real PostgreSQL server.

Database sizes come from one query per server; per-table sizes and row estimates, usage counters and
stored files by kind come from a scan of each tenant's own database, skipped while its size holds and
bounded in concurrency; results land in the snapshot, the history, ``tenant_storage_usage`` and the
quotas' ``current_usage``; a tenant that cannot be read is counted as failed without stopping the cycle;
a restarted service neither starts empty nor rescans. History downsampling: ``test_usage_history.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from controlplane import db
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.settings import Settings, UsageSettings
from controlplane.usage.collector import DIRECTORY, SCAN_ROLE, Collector
from controlplane.usage.models import StorageUsage
from controlplane.usage.service import UsageService, describe
from tests.conftest import eventually, make_settings
from tests.harness import LocalClusterHandle
from tests.integration.tenant_support import execute, fetch
from tests.integration.usage_support import (
    CountingConnection,
    add_cards,
    add_files,
    add_users,
    analyze,
    create_tenants,
    database_size,
    metric_rows,
)

CONCURRENCY = 2


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    """The suite's settings with a private data directory and a small scan concurrency."""
    return make_settings(control_dsn, tenant_template_name).replace(
        data_dir=tmp_path / "data", usage=UsageSettings(concurrency=CONCURRENCY)
    )


@pytest.fixture
def usage(platform: Platform) -> UsageService:
    return UsageService(platform)


# -- sizes, tables, counters, storage ----------------------------------------------------------------


async def test_sizes_come_from_one_query_per_server_and_servers_are_summed(
    platform: Platform, service: TenantService, pg_admin_dsn: str, extra_cluster: Callable[[], LocalClusterHandle]
) -> None:
    tenants = await create_tenants(service, "size-a", "size-b", "size-c")
    # A second server gets the next two tenants.
    second = extra_cluster()
    async with platform.control.connection() as conn:
        await platform.fleet.register(conn, "second", second.dsn)
    tenants += await create_tenants(service, "size-d", "size-e")
    assert {t.server_name for t in tenants[3:]} == {"second"}

    statements: list[str] = []

    @asynccontextmanager
    async def counting_admin(control: db.AsyncConn, server_id: uuid.UUID) -> AsyncIterator[Any]:
        async with platform.fleet.admin(control, server_id) as conn:
            yield CountingConnection(conn, statements)

    collector = Collector(platform.fleet, platform.settings.database, concurrency=CONCURRENCY, admin=counting_admin)
    usage = UsageService(platform, collector=collector)
    stats = await usage.collect()

    assert (stats.tenants, stats.scanned, stats.failed, stats.servers) == (5, 5, 0, 2)
    size_queries = [s for s in statements if "pg_database_size" in s]
    assert len(size_queries) == 2, size_queries  # one per server, whatever the number of tenants
    snapshot = usage.snapshot
    for tenant in tenants:
        measured = snapshot.tenants[tenant.id]
        assert (measured.slug, measured.server, measured.status) == (tenant.slug, tenant.server_name, "active")
        server_dsn = second.dsn if tenant.server_name == "second" else pg_admin_dsn
        assert measured.database_bytes == await database_size(server_dsn, tenant)
    for name, members in (("default", tenants[:3]), ("second", tenants[3:])):
        server = snapshot.servers[name]
        assert server.tenants == len(members)
        assert server.database_bytes == sum(snapshot.tenants[t.id].database_bytes for t in members)
        assert 0 < server.connections <= server.max_connections
    assert snapshot.last == stats
    assert describe(stats) == "5 tenant(s) on 2 server(s): 5 scanned, 0 unchanged, 0 failed"


async def test_tables_row_estimates_and_counters_of_each_tenant_alone(
    usage: UsageService, service: TenantService, pg_admin_dsn: str
) -> None:
    busy, quiet = await create_tenants(service, "busy-shop", "quiet-shop")
    await add_cards(pg_admin_dsn, busy, 120)
    await add_users(pg_admin_dsn, busy, 3)
    await add_cards(pg_admin_dsn, quiet, 7)
    await analyze(pg_admin_dsn, busy, quiet)

    await usage.collect()

    busy_usage, quiet_usage = (usage.snapshot.tenants[t.id] for t in (busy, quiet))
    for measured in (busy_usage, quiet_usage):
        tables = {t.table for t in measured.tables}
        assert {"cards", "users", "files", "players", "teams", "manufacturers", "audit_log"} <= tables
        assert all(t.total_bytes > 0 for t in measured.tables if t.table == "cards")
        assert measured.tables_scanned_at is not None
    rows = {t.table: t.row_estimate for t in busy_usage.tables}
    assert (rows["cards"], rows["users"]) == (120, 3)
    assert {t.table: t.row_estimate for t in quiet_usage.tables}["cards"] == 7
    # Each tenant's numbers are its own database's, never the other's.
    assert busy_usage.counters == {"cards": 120, "users": 3, "storage_bytes": 0}
    assert quiet_usage.counters == {"cards": 7, "users": 0, "storage_bytes": 0}
    cards_bytes = {m.tenant_id: {t.table: t.total_bytes for t in m.tables}["cards"] for m in (busy_usage, quiet_usage)}
    assert cards_bytes[busy.id] > cards_bytes[quiet.id]


async def test_storage_by_kind_and_the_storage_directory(
    usage: UsageService, service: TenantService, platform: Platform, pg_admin_dsn: str, control_dsn: str
) -> None:
    shop, other = await create_tenants(service, "file-shop", "file-other")
    await add_files(pg_admin_dsn, shop, [("image", 100), ("image", 200), ("attachment", 50)])
    await add_files(pg_admin_dsn, other, [("export", 7000)])
    directory = platform.settings.data_dir / "storage" / str(shop.id)
    directory.mkdir(parents=True)
    (directory / "a.png").write_bytes(b"x" * 10)
    (directory / "b.png").write_bytes(b"x" * 20)
    (directory / ".tmp-123").write_bytes(b"x" * 999)  # an object being written: not counted

    await usage.collect()

    expected = {
        "image": StorageUsage(bytes=300, files=2),
        "attachment": StorageUsage(bytes=50, files=1),
        "export": StorageUsage(bytes=0, files=0),
        DIRECTORY: StorageUsage(bytes=30, files=2),
    }
    assert usage.snapshot.tenants[shop.id].storage == expected
    assert usage.snapshot.tenants[other.id].storage == {
        "image": StorageUsage(bytes=0, files=0),
        "attachment": StorageUsage(bytes=0, files=0),
        "export": StorageUsage(bytes=7000, files=1),
        DIRECTORY: StorageUsage(bytes=0, files=0),
    }
    rows = await fetch(
        control_dsn,
        "SELECT storage_type, bytes_used, file_count FROM tenant_storage_usage WHERE tenant_id = %s",
        (shop.id,),
    )
    assert {r["storage_type"]: StorageUsage(bytes=r["bytes_used"], files=r["file_count"]) for r in rows} == expected


async def test_quotas_current_usage(
    usage: UsageService, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    shop, other = await create_tenants(service, "quota-shop", "quota-other")
    await add_cards(pg_admin_dsn, shop, 12)
    await add_users(pg_admin_dsn, shop, 2)
    await add_files(pg_admin_dsn, shop, [("image", 1000), ("export", 24)])
    hour = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) // 3600 * 3600, UTC)
    await execute(
        control_dsn,
        "INSERT INTO tenant_api_calls (tenant_id, hour, calls) VALUES (%s, %s, 17), (%s, %s, 99)",
        (shop.id, hour, shop.id, hour - timedelta(hours=1)),  # the previous hour does not count
    )

    await usage.collect()

    async def current(tenant: Tenant) -> dict[str, int]:
        rows = await fetch(
            control_dsn, "SELECT quota_type, current_usage FROM tenant_quotas WHERE tenant_id = %s", (tenant.id,)
        )
        return {r["quota_type"]: r["current_usage"] for r in rows}

    assert await current(shop) == {"cards": 12, "users": 2, "storage_bytes": 1024, "api_calls_per_hour": 17}
    assert await current(other) == {"cards": 0, "users": 0, "storage_bytes": 0, "api_calls_per_hour": 0}


# -- skipping unchanged tenants, history -----------------------------------------------------------


async def test_unchanged_tenants_are_skipped_and_a_grown_one_is_rescanned(
    usage: UsageService, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    grows, stays = await create_tenants(service, "grows", "stays")
    first = await usage.collect()
    assert (first.tenants, first.scanned) == (2, 2)
    first_rows = await metric_rows(control_dsn, grows)
    names = {r["metric_name"] for r in first_rows}
    assert {"database_bytes", "storage_bytes", "cards", "users", "table_bytes:cards"} <= names

    second = await usage.collect()
    assert (second.tenants, second.scanned, second.failed) == (2, 0, 0)
    assert describe(second) == "2 tenant(s) on 1 server(s): 0 scanned, 2 unchanged, 0 failed"
    second_rows = [r for r in await metric_rows(control_dsn, grows) if r["recorded_at"] == second.started_at]
    # Every cycle records the gauges; table sizes only when the tables were scanned.
    assert sorted(r["metric_name"] for r in second_rows) == ["cards", "database_bytes", "storage_bytes", "users"]

    size_before = usage.snapshot.tenants[grows.id].database_bytes
    await add_cards(pg_admin_dsn, grows, 1000, note_bytes=2048)  # ~2 MB
    await execute(pg_admin_dsn, "CHECKPOINT")
    third = await usage.collect()
    assert (third.scanned, third.failed) == (1, 0)
    grown = usage.snapshot.tenants[grows.id]
    assert grown.database_bytes > size_before + 1_500_000
    assert grown.counters["cards"] == 1000
    assert grown.tables_scanned_at is not None and grown.tables_scanned_at >= third.started_at
    stays_scanned = usage.snapshot.tenants[stays.id].tables_scanned_at
    assert stays_scanned is not None and stays_scanned < third.started_at

    full = await usage.collect(full=True)
    assert full.scanned == 2


async def test_a_restarted_service_has_a_snapshot_and_does_not_rescan(
    platform: Platform, usage: UsageService, service: TenantService, pg_admin_dsn: str
) -> None:
    (shop,) = await create_tenants(service, "restart-shop")
    await add_cards(pg_admin_dsn, shop, 5)
    await add_files(pg_admin_dsn, shop, [("image", 64)])
    await analyze(pg_admin_dsn, shop)
    await usage.collect()
    before = usage.snapshot.tenants[shop.id]

    restarted = UsageService(platform)
    await restarted.load()
    loaded = restarted.snapshot.tenants[shop.id]
    assert (loaded.slug, loaded.database_bytes, loaded.counters) == (shop.slug, before.database_bytes, before.counters)
    assert loaded.tables == before.tables
    assert loaded.storage == before.storage
    assert loaded.tables_scanned_at == before.tables_scanned_at

    stats = await restarted.collect()
    assert (stats.tenants, stats.scanned) == (1, 0)


# -- failures, suspended tenants, concurrency -------------------------------------------------------


async def test_a_tenant_that_cannot_be_read_fails_alone(
    usage: UsageService, service: TenantService, pg_admin_dsn: str
) -> None:
    lost, fine, resting = await create_tenants(service, "lost-shop", "fine-shop", "resting-shop")
    await service.suspend(resting.slug)
    await usage.collect()
    lost_before = usage.snapshot.tenants[lost.id]

    # Its database disappears behind the registry's back.
    await execute(pg_admin_dsn, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(lost.database_name)))
    await add_cards(pg_admin_dsn, fine, 300, note_bytes=256)
    stats = await usage.collect()

    assert (stats.tenants, stats.failed, stats.failed_tenants, stats.scanned) == (3, 1, ("lost-shop",), 1)
    assert describe(stats).endswith("1 failed (lost-shop)")
    assert usage.snapshot.tenants[fine.id].counters["cards"] == 300
    # A suspended tenant is measured like any other; the lost one keeps its last values, marked old.
    assert usage.snapshot.tenants[resting.id].status == "suspended"
    assert usage.snapshot.tenants[resting.id].measured_at == stats.started_at
    assert usage.snapshot.tenants[lost.id].measured_at == lost_before.measured_at < stats.started_at


async def test_an_unreachable_server_fails_its_tenants_only(
    usage: UsageService, platform: Platform, service: TenantService, control_dsn: str
) -> None:
    stranded, fine = await create_tenants(service, "stranded", "fine-too")
    async with platform.control.connection() as conn:
        # Port 1 on the loopback: nothing listens there, so the server is unreachable.
        ghost = await platform.fleet.register(
            conn, "ghost", "host=127.0.0.1 port=1 user=nobody dbname=postgres", check=False
        )
    await execute(control_dsn, "UPDATE db_servers SET status = 'draining' WHERE id = %s", (ghost.id,))
    await execute(control_dsn, "UPDATE tenants SET server_id = %s WHERE id = %s", (ghost.id, stranded.id))

    stats = await usage.collect()

    assert (stats.servers, stats.failed_servers, stats.failed_tenants, stats.scanned) == (1, 1, ("stranded",), 1)
    assert describe(stats) == (
        "2 tenant(s) on 1 server(s): 1 scanned, 0 unchanged, 1 failed, 1 server(s) unreachable (stranded)"
    )
    assert set(usage.snapshot.servers) == {"default"}
    assert set(usage.snapshot.tenants) == {fine.id}


async def test_scans_run_at_most_concurrency_at_once_on_their_own_connections(
    platform: Platform, service: TenantService
) -> None:
    tenants = await create_tenants(service, *(f"many-{i}" for i in range(5)))
    open_now = peak = 0
    names: set[str] = set()

    @asynccontextmanager
    async def watched(dsn: str, dbname: str) -> AsyncIterator[db.AsyncConn]:
        nonlocal open_now, peak
        async with db.connect(dsn, platform.settings.database, dbname=dbname, role=SCAN_ROLE) as conn:
            open_now += 1
            peak = max(peak, open_now)
            try:
                cur = await conn.execute("SELECT current_setting('application_name') AS name")
                row = await cur.fetchone()
                assert row is not None
                names.add(row["name"])
                await asyncio.sleep(0.05)  # hold it, so scans would pile up if the bound did not hold
                yield conn
            finally:
                open_now -= 1

    collector = Collector(platform.fleet, platform.settings.database, concurrency=CONCURRENCY, connect=watched)
    stats = await UsageService(platform, collector=collector).collect()

    assert stats.scanned == len(tenants)
    assert peak == collector.peak_in_flight == CONCURRENCY
    assert names == {f"{db.APPLICATION_NAME}-{SCAN_ROLE}"}


async def test_the_default_scan_connection_is_a_short_lived_usage_session(
    usage: UsageService, service: TenantService, pg_admin_dsn: str
) -> None:
    await create_tenants(service, "short-lived")
    await usage.collect()
    assert usage.collector.peak_in_flight == 1

    async def closed() -> bool:  # once the scan is done (the backend exits just after the client closes)
        rows = await fetch(
            pg_admin_dsn,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s",
            (f"{db.APPLICATION_NAME}-{SCAN_ROLE}",),
        )
        return bool(rows[0]["n"] == 0)

    await eventually(closed, "the scan connection is closed")
