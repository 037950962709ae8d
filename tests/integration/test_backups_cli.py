"""``cardvault backups create SLUG | list SLUG`` as operators run them (a subprocess with its own environment).

``create`` waits for the backup and prints it (exit 0), or exits 1 with a JSON error (an unknown tenant, a
failed dump); ``list`` shows the tenant's backups newest first, as a table or JSON. Both are audited.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from tests.integration.backup_support import add_cards
from tests.integration.cli_support import cli_env, ok, refused, run_cli
from tests.integration.tenant_support import drop_database


async def test_create_and_list(
    service: TenantService,
    platform: Platform,
    control_dsn: str,
    tenant_template_name: str,
    tmp_path: Path,
    pg_admin_dsn: str,
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="professional")
    await add_cards(pg_admin_dsn, tenant, ["one", "two"])
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")

    created = ok(await asyncio.to_thread(run_cli, env, "backups", "create", "acme", "--json")).json()
    assert created["status"] == "succeeded" and created["trigger"] == "manual"
    assert created["requested_by"].startswith("cli:") and created["manifest"]["tables"]["public.cards"] == 2
    stored = tmp_path / "data" / "backups" / "backups" / str(tenant.id) / f"{created['id']}.dump.cvs"
    assert stored.stat().st_size == created["bytes"] and oct(stored.stat().st_mode & 0o777) == "0o600"

    table = ok(await asyncio.to_thread(run_cli, env, "backups", "list", "acme")).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "TRIGGER"]
    assert table[1].split()[:3] == [created["id"], "succeeded", "manual"]
    assert refused(await asyncio.to_thread(run_cli, env, "backups", "create", "nobody"), "tenant_not_found")
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT actor, outcome FROM platform_audit WHERE action = 'tenant.backup' ORDER BY id")
        rows = await cur.fetchall()
    assert [r["outcome"] for r in rows] == ["succeeded", "failed"] and rows[0]["actor"].startswith("cli:")


async def test_a_failed_backup_exits_non_zero_with_the_reason(
    service: TenantService, control_dsn: str, tenant_template_name: str, tmp_path: Path, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await asyncio.to_thread(drop_database, pg_admin_dsn, tenant.database_name)  # gone under the registry
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    result = await asyncio.to_thread(run_cli, env, "backups", "create", "acme")
    body = refused(result, "operation_failed")
    assert tenant.database_name in body["detail"] and body["backup_id"]
    assert not list((tmp_path / "data" / "backups").rglob("*.cvs"))
