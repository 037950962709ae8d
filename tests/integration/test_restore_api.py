"""Restores and verifications through the admin API and the ``cardvault backups`` command: super-admins only
(a tenant's admin, of this tenant or another, is refused and changes nothing), audited, and a backup is
never restored into another tenant."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.cli_support import cli_env, ok, refused, run_cli
from tests.integration.restore_support import add_card, cards_via_api, flip_byte, object_path, restores_of
from tests.integration.tenant_support import fetch, provision_with_admin, snapshot


async def test_the_admin_api_restores_verifies_and_rolls_back_and_tenant_admins_cannot(
    client: AsyncTestClient[object], platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    _, auth = await provision_with_admin(client, "acme")
    _, other_auth = await provision_with_admin(client, "other")
    kept = await add_card(client, "acme", auth, "A-1")
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        foreign = await r.backup("other")
    await add_card(client, "acme", auth, "A-2")
    before = await snapshot(control_dsn, pg_admin_dsn)

    # A tenant's admins, its own or another tenant's, cannot restore, roll back or verify anything, and a
    # forged token is no credential at all.
    forged = {"Authorization": "Bearer " + auth["Authorization"].split()[1][:-4] + "AAAA"}
    for path in ("/admin/tenants/acme/restore", f"/admin/backups/{backup.id}/verify"):
        response = await client.post(path, json={"latest": True}, headers=forged)
        assert response.status_code == 401, response.text
    for headers in (auth, other_auth):
        for path, body in (
            ("/admin/tenants/acme/restore", {"backup_id": str(backup.id)}),
            ("/admin/tenants/acme/rollback", None),
            (f"/admin/backups/{backup.id}/verify", None),
        ):
            response = await client.post(path, json=body, headers=headers)
            assert response.status_code == 403, response.text
    for path in ("/t/acme/api/restore", "/t/acme/api/backups/restore"):
        response = await client.post(path, json={"backup_id": str(backup.id)}, headers=auth)
        assert response.status_code in (404, 405), response.text
    # Another tenant's backup is refused; so are unknown backups and tenants, and a body naming none.
    refusals = [
        ("/admin/tenants/acme/restore", {"backup_id": str(foreign.id)}, 409, "backup_mismatch"),
        ("/admin/tenants/acme/restore", {"backup_id": "00000000-0000-0000-0000-000000000001"}, 404, "backup_not_found"),
        ("/admin/tenants/nobody/restore", {"latest": True}, 404, "tenant_not_found"),
        ("/admin/tenants/acme/restore", {}, 400, "validation_failed"),
        ("/admin/tenants/acme/rollback", None, 409, "nothing_to_roll_back"),
    ]
    for path, body, status, code in refusals:
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()["error"]) == (status, code), response.text
    after = await snapshot(control_dsn, pg_admin_dsn)
    assert (after.registry["tenants"], after.databases, after.roles) == (
        before.registry["tenants"],
        before.databases,
        before.roles,
    )

    response = await client.post(f"/admin/backups/{backup.id}/verify")
    assert response.status_code == 200 and response.json()["ok"] is True, response.text
    listed = await client.get(f"/admin/backups/{backup.id}/verifications")
    assert [v["ok"] for v in listed.json()] == [True]

    response = await client.post("/admin/tenants/acme/restore", json={"latest": True, "pre_backup": False})
    assert response.status_code == 200, response.text
    assert (response.json()["kind"], response.json()["state"]) == ("restore", "succeeded")
    assert [c["cardnumber"] for c in await _served_cards(client, auth)] == [kept["cardnumber"]]

    response = await client.post("/admin/tenants/acme/rollback")
    assert response.status_code == 200, response.text
    assert [c["cardnumber"] for c in await _served_cards(client, auth)] == ["A-1", "A-2"]

    audit = await fetch(
        control_dsn,
        "SELECT action, outcome, tenant_slug, details ->> 'error' AS error FROM platform_audit"
        " WHERE action IN ('tenant.restore', 'tenant.rollback', 'backup.verify') ORDER BY id",
    )
    assert [(a["action"], a["outcome"], a["error"]) for a in audit] == [
        ("tenant.restore", "failed", "backup_mismatch"),
        ("tenant.restore", "failed", "backup_not_found"),
        ("tenant.restore", "failed", "tenant_not_found"),
        ("tenant.restore", "failed", "validation_failed"),
        ("tenant.rollback", "failed", "nothing_to_roll_back"),
        ("backup.verify", "succeeded", None),
        ("tenant.restore", "succeeded", None),
        ("tenant.rollback", "succeeded", None),
    ]


async def _served_cards(client: AsyncTestClient[object], auth: dict[str, str]) -> list[dict[str, object]]:
    """The cards the API serves once it has heard of the switch (a request or two may get 503 before)."""
    for _ in range(50):
        response = await client.get("/t/acme/api/cards", headers=auth)
        if response.status_code == 200:
            return await cards_via_api(client, "acme", auth)
        assert response.status_code == 503, response.text
    raise AssertionError("the API did not serve the tenant again")


async def test_the_command_line_restores_and_verifies(
    settings: Settings, platform: Platform, service: TenantService, control_dsn: str
) -> None:
    await service.create(name="Acme", slug="acme", tier="starter")
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        damaged = await r.backup("acme")
    flip_byte(object_path(platform, damaged), 50)
    env = cli_env(control_dsn, settings.provisioning.template_database, Path(settings.data_dir))

    refused(run_cli(env, "backups", "restore", "acme", "--latest"), "confirmation_required")
    refused(run_cli(env, "backups", "restore", "acme"), "validation_failed")
    found = ok(run_cli(env, "backups", "verify", str(backup.id), "--json")).json()
    assert found["ok"] is True
    assert "checksum" in refused(run_cli(env, "backups", "verify", str(damaged.id)), "backup_corrupted")["detail"]

    op = ok(run_cli(env, "backups", "restore", "acme", "--latest", "--yes", "--json")).json()
    assert (op["kind"], op["state"], op["params"]["backup_id"]) == ("restore", "succeeded", str(backup.id))
    assert ok(run_cli(env, "backups", "rollback", "acme", "--yes", "--json")).json()["state"] == "succeeded"
