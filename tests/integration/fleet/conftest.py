"""The fleet of these tests (see ``fleet_support``), started once for the package: its own control database
(a clone of the session's migrated one), a second cluster, three ``cardvault serve`` processes and ten
tenants on each server. Starting three processes costs most of the setup, so the tests share them;
``fleet`` hands each test a healthy fleet (both servers up, three live processes, placement as the
registry has it). At the end the processes are stopped, every tenant database the control plane made is
dropped, then the control database, and the second cluster is destroyed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql

from controlplane import db
from tests.conftest import drop_everything_made_by
from tests.harness import new_cluster
from tests.integration.fleet.fleet_support import (
    Fleet,
    build_fleet,
    start_processes,
    stop_processes,
)

#: Tenants on each server at the start.
PER_SERVER = 10
#: The processes' own settings (beyond ``tests.conftest.serve``'s): the leader reconciles every 2 s.
ENV = {"CARDVAULT_RECONCILE_INTERVAL": "2"}


@pytest.fixture(scope="package")
async def fleet_base(
    pg_admin_dsn: str, control_template: str, tenant_template_name: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    name = f"cvtest_ctl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(control_template)))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident))
    control_dsn = db.with_database(pg_admin_dsn, name)
    tmp_path = tmp_path_factory.mktemp("fleet")
    second_started = asyncio.to_thread(new_cluster)
    processes_started = asyncio.to_thread(start_processes, 3, control_dsn, tenant_template_name, tmp_path, ENV)
    second, processes = await asyncio.gather(second_started, processes_started, return_exceptions=True)
    fleet: Fleet | None = None
    try:
        if isinstance(second, BaseException):
            raise second
        if isinstance(processes, BaseException):
            raise processes
        fleet = await build_fleet(
            control_dsn, pg_admin_dsn, second, processes, PER_SERVER, tmp_path, ENV, tenant_template_name
        )
        yield fleet
    finally:
        if fleet is not None:
            await fleet.aclose()
            processes = fleet.processes
        if isinstance(processes, list):
            await asyncio.to_thread(stop_processes, processes)
        drop_everything_made_by(control_dsn)
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not isinstance(second, BaseException):
            second.destroy()


@pytest.fixture
async def fleet(fleet_base: Fleet) -> Fleet:
    """The package's fleet, healthy: both servers up, three live processes, tenants where the registry says."""
    await fleet_base.heal()
    return fleet_base
