"""Per-user data access exports (GDPR): a user's own data, asked for by the user or a tenant admin.

The archive holds the user's row (no password hash), their sessions and API keys (no secrets), the audit
entries they are the actor of and the cards they created, and nothing of another user. Only whoever asked
for it (or someone who may make one) can see or download it. Exports survive a worker that dies: the
leader's job takes an export whose lease ended and makes it, and the dead worker's late write is refused.
"""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.context import TenantContext
from controlplane.http.state import PRIVACY_STATE_KEY
from controlplane.platform import Platform
from controlplane.privacy import repository
from controlplane.privacy.models import ExportKind
from controlplane.privacy.service import Privacy
from controlplane.registry import repository as registry
from controlplane.settings import Settings
from tests.integration.auth_support import add_user, create_tenant, login_as
from tests.integration.privacy_support import (
    ask,
    download_path,
    everything,
    export_row,
    open_archive,
    stored_object,
    table,
    wait_ready,
)
from tests.integration.tenant_support import execute

Client = AsyncTestClient[Any]


async def _download(client: Client, path: str, auth: dict[str, str]) -> bytes:
    response = await client.get(path, headers=auth)
    assert response.status_code == 200, response.text
    return bytes(response.content)


async def test_a_user_export_holds_that_users_data_and_nobody_elses(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme", tier="enterprise")
    alice_id = await add_user(platform, "acme", "alice@acme.test", "user")
    bob_id = await add_user(platform, "acme", "bob@acme.test", "user")
    alice, bob = await login_as(client, "acme", "alice@acme.test"), await login_as(client, "acme", "bob@acme.test")
    for auth, notes in ((alice, "alice-card"), (bob, "bob-card"), (acme.auth, "admin-card")):
        made = await client.post(acme.api("/cards"), json={"cardnumber": "X", "notes": notes}, headers=auth)
        assert made.status_code == 201, made.text
    key = await client.post(acme.api("/api-keys"), json={"name": "sync", "role": "user"}, headers=acme.auth)
    assert key.status_code == 201, key.text

    # Alice exports her own data; she follows it and downloads it herself.
    own = await ask(client, acme, "/me/export", alice)
    assert (own["kind"], own["subject"]) == ("user", alice_id)
    await wait_ready(client, acme, own["id"], alice)
    archive, manifest = open_archive(
        await _download(client, acme.api(download_path(own["id"], own["download_token"])), alice)
    )
    assert (manifest["kind"], manifest["subject"], manifest["entries"] != []) == ("user", alice_id, True)
    (row,) = table(archive, "users")
    assert row["email"] == "alice@acme.test" and not {"password_hash", "invite_hash"} & set(row)
    assert [c["notes"] for c in table(archive, "cards")] == ["alice-card"]
    assert {s["user_id"] for s in table(archive, "auth_sessions")} == {alice_id}
    assert {a["actor"] for a in table(archive, "audit_log")} == {f"user:{alice_id}"}
    assert table(archive, "api_keys") == [] and not [n for n in archive.namelist() if n.startswith("files/")]
    content = everything(archive)
    for foreign in (b"bob", acme.admin_email.encode(), b"admin-card", b"$argon2"):
        assert foreign not in content

    # The admin exports Bob's data: Bob cannot see it, even with the link; the admin can.
    bobs = await ask(client, acme, f"/users/{bob_id}/export", acme.auth)
    await wait_ready(client, acme, bobs["id"], acme.auth)
    for path in (f"/exports/{bobs['id']}", download_path(bobs["id"], bobs["download_token"])):
        refused = await client.get(acme.api(path), headers=bob)
        assert (refused.status_code, refused.json()["error"]) == (404, "not_found"), path
    archive, _ = open_archive(
        await _download(client, acme.api(download_path(bobs["id"], bobs["download_token"])), acme.auth)
    )
    assert [u["email"] for u in table(archive, "users")] == ["bob@acme.test"]
    assert b"alice" not in everything(archive)
    # A plain user may not export someone else's data; nobody's that does not exist.
    other = await client.post(acme.api(f"/users/{alice_id}/export"), headers=bob)
    assert (other.status_code, other.json()["error"]) == (403, "permission_denied")
    missing = await client.post(acme.api("/users/987654/export"), headers=acme.auth)
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")

    # The admin's own export lists the API key they made, without its secret.
    mine = await ask(client, acme, "/me/export", acme.auth)
    await wait_ready(client, acme, mine["id"], acme.auth)
    archive, _ = open_archive(
        await _download(client, acme.api(download_path(mine["id"], mine["download_token"])), acme.auth)
    )
    (api_key,) = table(archive, "api_keys")
    assert (
        api_key["name"] == "sync"
        and "key_hash" not in api_key
        and key.json()["key"].encode() not in everything(archive)
    )
    assert [e["id"] for e in (await client.get(acme.api("/me/exports"), headers=alice)).json()] == [own["id"]]


async def test_an_export_its_worker_abandoned_is_made_by_the_leader_job(
    client: Client, settings: Settings, control_dsn: str
) -> None:
    privacy: Privacy = client.app.state[PRIVACY_STATE_KEY]
    await create_tenant(client, "acme")
    async with privacy.platform.control.connection() as conn:
        tenant = await registry.get_by_slug(conn, "acme")
    assert tenant is not None
    # Asked for, then claimed by a worker that died (its lease is over): nobody else is making it.
    created = await privacy.exports.request(TenantContext.of(tenant), ExportKind.TENANT, None, "user:1")
    await execute(
        control_dsn,
        "UPDATE tenant_exports SET status = 'running', attempts = 1, lease_until = now() - interval '1 second'"
        " WHERE id = %s",
        (created.id,),
    )
    assert (await privacy.exports.upkeep()).startswith("1 export(s) made")
    row = await export_row(control_dsn, created.id)
    assert (row["status"], row["attempts"]) == ("ready", 2) and stored_object(settings, row["object_key"])
    # The first worker coming back late cannot overwrite what its successor did.
    async with privacy.platform.control.connection() as conn:
        late = await repository.mark_ready(
            conn, row["id"], 1, object_key="x", data_key_encrypted="y", size=1, sha256="0" * 64, ttl_seconds=1
        )
    assert late is False
    assert (await export_row(control_dsn, created.id))["object_key"] == row["object_key"]
    assert (await privacy.exports.upkeep()).startswith("0 export(s) made")  # nothing else is due
