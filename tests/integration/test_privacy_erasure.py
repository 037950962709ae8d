"""User erasure: the user and their personal data go, their audit entries stay under a pseudonym.

After a tenant admin erases a user, the user's email appears nowhere in a plain ``pg_dump`` of the tenant
database, nowhere in a plain ``pg_dump`` of the control database, and in no file of the tenant's storage;
their exports (and the tenant's unfinished ones) are withdrawn and their archives deleted; their tokens
stop working. The accounts rules hold (confirmation, no self-erasure, the last admin stays), on the API
and on the command line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient
from psycopg.types.json import Jsonb

from controlplane.auth.models import ROLE_PERMISSIONS, Principal, PrincipalKind, Role
from controlplane.context import AuditContext, TenantContext, TenantRequest
from controlplane.http.state import PRIVACY_STATE_KEY
from controlplane.localpg.binaries import find_bindir
from controlplane.platform import Platform
from controlplane.privacy.service import Privacy
from controlplane.registry import repository as registry
from controlplane.settings import Settings
from tests.integration.auth_support import (
    add_user,
    audit_rows,
    bearer,
    create_tenant,
    tenant_rows,
    tenant_superuser_dsn,
)
from tests.integration.cli_support import cli_env, ok, refused, run_cli
from tests.integration.privacy_support import ask, download_path, export_row, png, stored_object, wait_ready
from tests.integration.tenant_support import execute, fetch

Client = AsyncTestClient[Any]
VICTIM = "Vicky.Victim@Acme.test"
NAME = "Vicky Victim"


def pg_dump(dsn: str) -> str:
    """A plain-text dump of the whole database (schema and data)."""
    done = subprocess.run(
        [str(find_bindir() / "pg_dump"), "--no-owner", "--dbname", dsn], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def files_containing(directory: Path, needle: bytes) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.is_file() and needle.lower() in p.read_bytes().lower()]


async def test_an_erased_users_email_is_nowhere_and_their_audit_trail_is_pseudonymised(
    client: Client, platform: Platform, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    invited = await client.post(
        acme.api("/users"),
        json={"email": VICTIM, "role": "collection_manager", "display_name": NAME},
        headers=acme.auth,
    )
    assert invited.status_code == 201, invited.text  # the invitation mail is in the outbox now
    accepted = await client.post(
        "/t/acme/auth/invitations/accept", json={"invite_token": invited.json()["invite_token"], "password": "x" * 16}
    )
    assert accepted.status_code == 200, accepted.text
    victim, victim_id = bearer(accepted.json()["access_token"]), invited.json()["id"]
    card = await client.post(
        acme.api("/cards"), json={"cardnumber": "V-1", "notes": f"ask {VICTIM.lower()}"}, headers=victim
    )
    assert card.status_code == 201, card.text
    image = png() + VICTIM.encode()  # a file that holds the address itself
    put = await client.put(
        acme.api(f"/cards/{card.json()['id']}/image"), content=image, headers={**victim, "content-type": "image/png"}
    )
    assert put.status_code == 200, put.text
    own = await ask(client, acme, "/me/export", victim)
    await wait_ready(client, acme, own["id"], victim)
    tenant_export = await ask(client, acme, "/exports", acme.auth)
    await wait_ready(client, acme, tenant_export["id"], acme.auth)
    await tenant_rows(
        platform,
        "acme",
        "INSERT INTO audit_log (actor, action, details) VALUES ('system', 'note', %s)",
        (Jsonb({"about": NAME.upper(), "list": [NAME]}),),
    )
    await execute(
        control_dsn,
        "INSERT INTO platform_audit (actor, action, tenant_id, tenant_slug, details) VALUES ('automation', 'x', %s,"
        " 'acme', %s)",
        (acme.id, Jsonb({"reason": f"support call from {VICTIM}"})),
    )
    await execute(
        control_dsn,
        "INSERT INTO tenant_onboarding (tenant_id, admin_email, verify_hash, verify_expires_at)"
        " VALUES (%s, %s, '\\x01', now())",
        (acme.id, VICTIM),
    )
    audit_before = len(await audit_rows(platform, "acme"))

    erase = acme.api(f"/users/{victim_id}/erase")
    wrong = await client.post(erase, json={"confirm_email": "someone@else.test"}, headers=acme.auth)
    assert (wrong.status_code, wrong.json()["error"]) == (400, "confirmation_required")
    by_victim = await client.post(acme.api("/users/1/erase"), json={"confirm_email": acme.admin_email}, headers=victim)
    assert (by_victim.status_code, by_victim.json()["error"]) == (403, "permission_denied")
    self_erase = await client.post(
        acme.api("/users/1/erase"), json={"confirm_email": acme.admin_email}, headers=acme.auth
    )
    assert (self_erase.status_code, self_erase.json()["error"]) == (403, "permission_denied")
    assert (await client.get(acme.api("/me"), headers=victim)).status_code == 200  # nothing changed yet

    response = await client.post(erase, json={"confirm_email": VICTIM.lower(), "delete_files": True}, headers=acme.auth)
    assert response.status_code == 200, response.text
    result = response.json()
    alias = result["pseudonym"]
    assert alias.startswith("erased:") and result["files_removed"] == 1 and result["sessions_removed"] == 1
    assert VICTIM.lower() not in response.text.lower()
    assert (await client.get(acme.api("/me"), headers=victim)).status_code == 401

    # Nowhere: the tenant database, the control database, the tenant's files.
    tenant_dump = pg_dump(await tenant_superuser_dsn(platform, "acme")).lower()
    assert VICTIM.lower() not in tenant_dump and NAME.lower() not in tenant_dump
    assert VICTIM.lower() not in pg_dump(control_dsn).lower()
    storage = settings.data_dir / "storage" / str(acme.id)
    assert files_containing(storage, VICTIM.encode()) == []

    # The audit trail stays, under the pseudonym; the erasure itself is recorded without the address.
    rows = await audit_rows(platform, "acme")
    assert len(rows) == audit_before + 1
    assert not [r for r in rows if r["actor"] == f"user:{victim_id}"]
    acted = [r for r in rows if r["actor"] == alias]
    assert {r["action"] for r in acted} >= {"user.invite.accept", "card.create", "card.image.put", "export.request"}
    assert all(r["source_address"] is None for r in acted)
    erased = rows[-1]
    assert (erased["action"], erased["entity_id"], erased["actor"]) == ("user.erase", alias, "user:1")
    assert [r["details"] for r in rows if r["action"] == "note"] == [{"about": alias, "list": [alias]}]
    (kept,) = await tenant_rows(platform, "acme", "SELECT created_by, image, notes FROM cards")
    assert kept == {"created_by": None, "image": None, "notes": f"ask {alias}"}

    # Exports: the user's own and the tenant's unfinished one are withdrawn, their archives deleted.
    for made in (own, tenant_export):
        row = await export_row(control_dsn, made["id"])
        assert row["status"] == "expired" and row["object_deleted_at"] is not None, row
        assert stored_object(settings, row["object_key"]) is None
    gone = await client.get(
        acme.api(download_path(tenant_export["id"], tenant_export["download_token"])), headers=acme.auth
    )
    assert gone.status_code == 410
    (erasure,) = await fetch(control_dsn, "SELECT * FROM user_erasures")
    assert erasure["state"] == "done" and erasure["email_encrypted"] is None and erasure["pseudonym"] == alias
    assert (await fetch(control_dsn, "SELECT admin_email FROM tenant_onboarding"))[0]["admin_email"] == alias


async def test_erasures_a_process_left_half_done_are_finished_or_abandoned(
    client: Client, platform: Platform, control_dsn: str
) -> None:
    privacy: Privacy = client.app.state[PRIVACY_STATE_KEY]
    acme = await create_tenant(client, "acme")
    kept_id = await add_user(platform, "acme", "kept@acme.test", "user")
    gone_id = await add_user(platform, "acme", "gone@acme.test", "user")
    await execute(
        control_dsn,
        "INSERT INTO mail_outbox (tenant_id, kind, recipient, subject, body) VALUES (%s, 'invitation', %s, 's', 'b')",
        (acme.id, "gone@acme.test"),
    )
    operator = Principal(
        kind=PrincipalKind.AUTOMATION, subject="automation", label="test", role=Role.SUPER_ADMIN,
        permissions=ROLE_PERMISSIONS[Role.SUPER_ADMIN], tenant_id=acme.id,
    )  # fmt: skip

    async def erase(user_id: int, email: str, *, commit: bool) -> None:
        """Erase as the API would, then die: before the tenant's commit, or after it (no ``after_commit``)."""
        async with platform.control.connection() as control:
            tenant = await registry.get_by_id(control, acme.id)
            assert tenant is not None
            async with platform.fleet.connect_database(control, tenant.server_id, tenant.database_name) as conn:
                await conn.execute("BEGIN")
                request = TenantRequest(
                    conn=conn, tenant=TenantContext.of(tenant), principal=operator, audit=AuditContext(actor="t")
                )
                await privacy.for_request(request).erase_user(user_id, email)
                await conn.execute("COMMIT" if commit else "ROLLBACK")

    await erase(kept_id, "kept@acme.test", commit=False)
    await erase(gone_id, "gone@acme.test", commit=True)
    assert await privacy.erasure.finish_pending() == "0 erasure(s) finished, 0 abandoned"  # too recent to judge
    await execute(control_dsn, "UPDATE user_erasures SET created_at = now() - interval '1 hour'")
    assert await privacy.erasure.finish_pending() == "1 erasure(s) finished, 1 abandoned"
    states = {r["user_id"]: r for r in await fetch(control_dsn, "SELECT * FROM user_erasures")}
    assert states[kept_id]["state"] == "abandoned" and states[gone_id]["state"] == "done"
    assert all(r["email_encrypted"] is None for r in states.values())
    assert await fetch(control_dsn, "SELECT 1 FROM mail_outbox WHERE recipient = 'gone@acme.test'") == []
    emails = {r["email"] for r in await tenant_rows(platform, "acme", "SELECT email FROM users")}
    assert emails == {acme.admin_email, "kept@acme.test"}


async def test_the_command_line_erases_users_but_never_the_last_admin(
    client: Client, platform: Platform, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    acme = await create_tenant(client, "acme")
    await add_user(platform, "acme", "Temp@Acme.test", "tenant_admin")
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    refused(run_cli(env, "privacy", "erase-user", "acme", "temp@acme.test"), "confirmation_required")  # no terminal
    erased = ok(run_cli(env, "privacy", "erase-user", "acme", "temp@acme.test", "--yes", "--json")).json()
    assert erased["pseudonym"].startswith("erased:") and erased["user_id"] == 2
    refused(run_cli(env, "privacy", "erase-user", "acme", acme.admin_email, "--yes"), "last_admin")
    assert [r["email"] for r in await tenant_rows(platform, "acme", "SELECT email FROM users")] == [acme.admin_email]
    (erasure,) = await audit_rows(platform, "acme", "user.erase")
    assert erasure["actor"].startswith("cli:") and erasure["entity_id"] == erased["pseudonym"]
