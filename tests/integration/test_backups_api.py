"""Backups over HTTP: the admin API and the tenant's own ``/t/{slug}/api/backups``.

An admin asks for a backup (202, run in the background, audited) and reads it back; a second one while one
is open is 409. A tenant admin lists and asks for their own tenant's backups only, and sees no object key,
data key, server, database name or error text; a plain user of the tenant is refused, and so is the admin
of another tenant (with its own token, by path or header), whose own list shows nothing of the first.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.backups.models import BackupStatus
from controlplane.backups.service import TENANT_REQUESTS_PER_DAY, BackupService
from controlplane.platform import Platform
from tests.conftest import eventually
from tests.integration.auth_support import add_user, audit_rows, create_tenant, login_as

Client = AsyncTestClient[Any]
TENANT_FIELDS = {
    "id",
    "status",
    "trigger",
    "created_at",
    "started_at",
    "finished_at",
    "expires_at",
    "bytes",
    "schema_revision",
}


async def finished(client: Client, backup_id: str) -> dict[str, Any]:
    """The backup once it is no longer pending or running (as the admin API shows it)."""
    seen: dict[str, Any] = {}

    async def done() -> bool:
        response = await client.get(f"/admin/backups/{backup_id}")
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return seen["status"] not in ("pending", "running")

    await eventually(done, f"backup {backup_id} finished", within=30)
    return seen


async def test_an_admin_backs_a_tenant_up_in_the_background(client: Client, platform: Platform) -> None:
    await create_tenant(client, "acme")
    response = await client.post("/admin/tenants/acme/backups")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending" and body["trigger"] == "manual" and body["tenant_slug"] == "acme"
    assert "data_key_encrypted" not in body
    done = await finished(client, body["id"])
    assert done["status"] == "succeeded" and done["bytes"] > 0 and len(done["sha256"]) == 64
    assert done["manifest"]["tables"]["public.users"] == 1
    listed = await client.get("/admin/tenants/acme/backups")
    assert [b["id"] for b in listed.json()["items"]] == [body["id"]]

    # One open backup per tenant: a pending one (not started) makes the next request a 409 ...
    service = BackupService(platform)  # of the test's own event loop (the app runs in another one)
    try:
        pending = await service.request("acme")
        refused = await client.post("/admin/tenants/acme/backups")
        assert refused.status_code == 409 and refused.json()["error"] == "backup_in_progress"
        # ... until the backup job's recovery runs it.
        assert await service.recover() == 1
        assert (await finished(client, str(pending.id)))["status"] == "succeeded"
    finally:
        await service.stop()

    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT actor, outcome, entity, entity_id FROM platform_audit WHERE action = 'tenant.backup' ORDER BY id"
        )
        audited = await cur.fetchall()
    assert [(a["outcome"], a["entity"], a["entity_id"]) for a in audited] == [
        ("succeeded", "backup", body["id"]),
        ("failed", "backup", None),
    ]


async def test_unknown_backups_and_tenants_are_404(client: Client) -> None:
    missing = await client.get(f"/admin/backups/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["error"] == "backup_not_found"
    for method in ("GET", "POST"):
        response = await client.request(method, "/admin/tenants/nobody/backups")
        assert response.status_code == 404 and response.json()["error"] == "tenant_not_found", response.text
    not_a_uuid = await client.get("/admin/backups/not-a-uuid")
    assert not_a_uuid.status_code == 404 and not_a_uuid.json()["error"] == "backup_not_found"


async def test_tenant_admins_see_and_ask_for_their_own_backups_only(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    other = await create_tenant(client, "other")
    await add_user(platform, "acme", "user@acme.test", "user")
    user = await login_as(client, "acme", "user@acme.test")
    client.headers.pop("Authorization")  # from here on, only the tenants' own credentials

    asked = await client.post(acme.api("/backups"), headers=acme.auth)
    assert asked.status_code == 202, asked.text
    assert set(asked.json()) == TENANT_FIELDS and asked.json()["trigger"] == "tenant"
    again = await client.post(acme.api("/backups"), headers=acme.auth)
    assert again.status_code == 409 and again.json()["error"] == "backup_in_progress"

    service = BackupService(platform)

    async def acme_done() -> bool:
        return (await service.get(uuid.UUID(asked.json()["id"]))).status is BackupStatus.SUCCEEDED

    await eventually(acme_done, "acme's backup succeeded", within=30)
    listed = await client.get(acme.api("/backups"), headers=acme.auth)
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert set(item) == TENANT_FIELDS and item["id"] == asked.json()["id"] and item["bytes"] > 0
    assert [r["entity_id"] for r in await audit_rows(platform, "acme", "backup.request")] == [item["id"]]

    # A plain user of the tenant: refused. The other tenant's admin: refused by path and by header, and
    # their own list is empty.
    for method in ("GET", "POST"):
        denied = await client.request(method, acme.api("/backups"), headers=user)
        assert (denied.status_code, denied.json()["error"]) == (403, "permission_denied")
        for url, extra in ((acme.api("/backups"), {}), ("/api/backups", {"X-Tenant": "acme"})):
            wrong = await client.request(method, url, headers={**other.auth, **extra})
            assert (wrong.status_code, wrong.json()["error"]) == (403, "wrong_tenant"), wrong.text
    assert (await client.get(other.api("/backups"), headers=other.auth)).json() == {"items": []}
    assert len(await service.list_for_tenant("acme")) == 1


async def test_tenant_admins_may_ask_a_few_times_a_day(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    service = BackupService(platform)
    for _ in range(TENANT_REQUESTS_PER_DAY):
        asked = await client.post(acme.api("/backups"), headers=acme.auth)
        assert asked.status_code == 202, asked.text
        backup_id = uuid.UUID(asked.json()["id"])

        async def done(backup_id: uuid.UUID = backup_id) -> bool:
            return (await service.get(backup_id)).status not in (BackupStatus.PENDING, BackupStatus.RUNNING)

        await eventually(done, "the backup ended", within=30)
    limited = await client.post(acme.api("/backups"), headers=acme.auth)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert limited.headers["retry-after"]
    # Operators are not limited.
    assert (await client.post("/admin/tenants/acme/backups")).status_code == 202
