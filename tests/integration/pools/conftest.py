"""Fixtures of the pool tests (helpers in ``pool_support.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from controlplane.pools.service import TenantPools
from controlplane.settings import DatabaseSettings, PoolSettings
from tests.integration.pools.pool_support import (
    MODULE_TENANTS,
    Directory,
    MakePools,
    TenantDb,
    create_tenant_db,
    drop_tenant_db,
)


@pytest.fixture(scope="module")
def tenants(pg_admin_dsn: str) -> Iterator[list[TenantDb]]:
    made: list[TenantDb] = []
    try:
        for _ in range(MODULE_TENANTS):
            made.append(create_tenant_db(pg_admin_dsn))
        yield made
    finally:
        for tenant in made:
            drop_tenant_db(pg_admin_dsn, tenant)


@pytest.fixture
def fresh_tenant(pg_admin_dsn: str) -> Iterator[TenantDb]:
    """A tenant of its own, for tests that change its role."""
    tenant = create_tenant_db(pg_admin_dsn)
    yield tenant
    drop_tenant_db(pg_admin_dsn, tenant)


@pytest.fixture
async def make_pools() -> AsyncIterator[MakePools]:
    """``make_pools(directory, connect_timeout=..., **pool_settings)``; all are closed at teardown."""
    made: list[TenantPools] = []

    def make(directory: Directory, connect_timeout: float = 3.0, **overrides: Any) -> TenantPools:
        settings = dataclasses.replace(
            PoolSettings(capacity=10, connection_budget=20, per_tenant_max=2, acquire_timeout=10.0), **overrides
        )
        pools = TenantPools(settings, DatabaseSettings(connect_timeout=connect_timeout), directory)
        made.append(pools)
        return pools

    yield make
    for pools in made:
        await pools.close()
