"""Admin API for tenant schema migrations: status only (runs are a CLI job: they take minutes)."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency

from controlplane.migrations.service import TenantMigrations
from controlplane.platform import Platform


@get("/admin/migrations", tags=["migrations"], summary="Tenants per schema revision and failures")
async def migration_status(platform: NamedDependency[Platform]) -> dict[str, Any]:
    return await TenantMigrations(platform).status()
