"""Deletion certificates of purged tenants, and audit-log retention.

A purge gets a certificate (from the ledger and the registry's tombstone, no hook in provisioning) that
names the database, role, files and registry rows it deleted and when, and every backup that remains
with its expiry; once the last backup is destroyed the certificate records when. Audit retention deletes
entries older than the setting, in the control database and in every tenant database, and nothing newer.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.http.state import PRIVACY_STATE_KEY
from controlplane.platform import Platform
from controlplane.privacy.retention import AuditRetention
from controlplane.privacy.service import Privacy
from controlplane.settings import PrivacySettings
from tests.integration.auth_support import create_tenant, tenant_rows
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.tenant_support import execute, fetch

Client = AsyncTestClient[Any]
DAY = timedelta(days=1)


async def _backup(control_dsn: str, tenant_id: uuid.UUID, expires_in: timedelta) -> uuid.UUID:
    """A succeeded backup row of the tenant (as the backup service records one), expiring in ``expires_in``."""
    backup_id = uuid.uuid4()
    await execute(
        control_dsn,
        """
        INSERT INTO backups (id, tenant_id, tenant_slug, server_id, database_name, status, trigger, store,
                             object_key, data_key_encrypted, bytes, finished_at, expires_at)
        SELECT %s, t.id, t.slug, t.server_id, t.database_name, 'succeeded', 'scheduled', 'local:test',
               'backups/' || t.id || '/' || %s || '.dump.cvs', 'k', 1000, now(), now() + %s
          FROM tenants t WHERE t.id = %s
        """,
        (backup_id, str(backup_id), expires_in, tenant_id),
    )
    return backup_id


async def test_a_purge_is_certified_with_what_it_deleted_and_the_backups_that_remain(
    client: Client, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    privacy: Privacy = client.app.state[PRIVACY_STATE_KEY]
    acme = await create_tenant(client, "acme")
    bare = await create_tenant(client, "bare")
    soon = await _backup(control_dsn, acme.id, 7 * DAY)
    late = await _backup(control_dsn, acme.id, 30 * DAY)
    for slug in ("acme", "bare"):
        assert (await client.delete(f"/admin/tenants/{slug}?now=true")).status_code == 204

    response = await client.get("/admin/deletion-certificates/acme")
    assert response.status_code == 200, response.text
    cert = response.json()
    (purge,) = await fetch(
        control_dsn, "SELECT * FROM tenant_operations WHERE tenant_id = %s AND kind = 'purge'", (acme.id,)
    )
    assert (cert["tenant_id"], cert["tenant_slug"], cert["operation_id"]) == (str(acme.id), "acme", purge["id"])
    assert datetime.fromisoformat(cert["purged_at"]) == purge["finished_at"]
    document = cert["document"]
    assert document["tenant"]["name"] == "acme" and document["tenant"]["tier"] == "professional"
    deleted = {d["item"]: d for d in document["deleted"]}
    assert deleted["database"]["name"] == deleted["role"]["name"] == f"t_{acme.id.hex}"
    assert deleted["database"]["server"] == "default" and deleted["files"]["location"].endswith(str(acme.id))
    registry_gone = datetime.fromisoformat(deleted["registry"]["deleted_at"])
    assert purge["started_at"] <= registry_gone <= purge["finished_at"]
    assert all(d["duration_ms"] >= 0 for d in document["deleted"])
    remaining = {b["backup_id"]: b for b in document["backups_remaining"]}
    assert set(remaining) == {str(soon), str(late)} and cert["backups_destroyed_at"] is None
    assert document["backups_expire_by"] == remaining[str(late)]["expires_at"]
    assert document["export_archives_remaining"] == 0

    # The tenant without backups: nothing to wait for. By id, and in the listing.
    by_id = (await client.get(f"/admin/deletion-certificates/{bare.id}")).json()
    assert by_id["backups_destroyed_at"] == by_id["purged_at"] and by_id["document"]["backups_remaining"] == []
    listed = (await client.get("/admin/deletion-certificates")).json()
    assert sorted(c["tenant_slug"] for c in listed) == ["acme", "bare"]
    missing = await client.get("/admin/deletion-certificates/nobody")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert await privacy.certificates.job() == "0 certificate(s) issued, 0 with every backup destroyed"

    # The backups expire at their normal time; then the certificate records when the last one went.
    await execute(control_dsn, "UPDATE backups SET status = 'expired', deleted_at = now() WHERE id = %s", (soon,))
    assert await privacy.certificates.job() == "0 certificate(s) issued, 0 with every backup destroyed"
    await execute(control_dsn, "UPDATE backups SET status = 'expired', deleted_at = now() WHERE id = %s", (late,))
    assert await privacy.certificates.job() == "0 certificate(s) issued, 1 with every backup destroyed"
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    shown = ok(run_cli(env, "privacy", "certificate", str(acme.id), "--json")).json()
    (last,) = await fetch(control_dsn, "SELECT deleted_at FROM backups WHERE id = %s", (late,))
    assert datetime.fromisoformat(shown["backups_destroyed_at"]) == last["deleted_at"]
    assert datetime.fromisoformat(shown["document"]["backups_destroyed_at"]) == last["deleted_at"]


async def test_audit_retention_deletes_old_entries_and_only_them(
    client: Client, platform: Platform, control_dsn: str
) -> None:
    await create_tenant(client, "acme")
    await create_tenant(client, "bravo")
    for slug in ("acme", "bravo"):
        await tenant_rows(
            platform,
            slug,
            "INSERT INTO audit_log (at, actor, action) VALUES"
            " (now() - interval '31 days', 'old', 'x'), (now() - interval '29 days', 'recent', 'x')",
        )
    await execute(
        control_dsn,
        "INSERT INTO platform_audit (at, actor, action) VALUES"
        " (now() - interval '31 days', 'old', 'x'), (now() - interval '29 days', 'recent', 'x')",
    )
    before = {s: len(await tenant_rows(platform, s, "SELECT 1 FROM audit_log")) for s in ("acme", "bravo")}

    def retention(days: float) -> AuditRetention:
        settings = dataclasses.replace(platform.settings, privacy=PrivacySettings(audit_retention=days * 86400))
        return AuditRetention(dataclasses.replace(platform, settings=settings), concurrency=2)

    off = await retention(0).run()
    assert off.describe().startswith("audit retention off") and off.platform_deleted == 0
    report = await retention(30).run()
    assert report.platform_deleted == 1 and sorted(report.tenant_deleted.values()) == [1, 1] and not report.failed
    for slug in ("acme", "bravo"):
        actors = [r["actor"] for r in await tenant_rows(platform, slug, "SELECT actor FROM audit_log")]
        assert "old" not in actors and "recent" in actors and len(actors) == before[slug] - 1
    actors = {r["actor"] for r in await fetch(control_dsn, "SELECT actor FROM platform_audit")}
    assert "old" not in actors and "recent" in actors
    assert (await retention(30).run()).describe() == (
        "0 platform and 0 tenant audit entries deleted (2 tenant(s), 0 failed)"
    )
