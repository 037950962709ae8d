"""Fixtures of the fleet migration tests: a copy of ``tenant_schema/`` with one more revision, a template private
to the test, and tenants provisioned at the current head."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.settings import ProvisioningSettings, Settings
from tests.conftest import make_settings
from tests.integration.migrations.migration_support import BASE, NEXT, REVISION_NEXT


@pytest.fixture
def schema_v2(tmp_path: Path) -> Path:
    """A copy of tenant_schema/ with revision NEXT added."""
    copy = tmp_path / "tenant_schema"
    shutil.copytree(ProvisioningSettings().tenant_schema_dir, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / f"{NEXT}_card_grading.py").write_text(REVISION_NEXT)
    return copy


@pytest.fixture
def private_template(pg_admin_dsn: str) -> Iterator[str]:
    """A template database name for this test only; dropped (on the default server) at teardown."""
    name = f"cvtest_mig_tpl_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def settings_v1(control_dsn: str, private_template: str) -> Settings:
    return make_settings(control_dsn, private_template)


@pytest.fixture
def settings_v2(control_dsn: str, private_template: str, schema_v2: Path) -> Settings:
    return make_settings(control_dsn, private_template, tenant_schema_dir=schema_v2)


@pytest.fixture
async def tenants_v1(settings_v1: Settings) -> AsyncIterator[dict[str, Tenant]]:
    """alpha (active), bravo (active) and charlie (suspended), provisioned at BASE."""
    async with Platform.open(settings_v1, migrate=False) as platform:
        service = TenantService(platform)
        made = {slug: await service.create(name=slug.title(), slug=slug, tier="starter") for slug in ("alpha", "bravo")}
        await service.create(name="Charlie", slug="charlie", tier="starter")
        made["charlie"] = await service.suspend("charlie")
    assert {t.schema_revision for t in made.values()} == {BASE}
    yield made
