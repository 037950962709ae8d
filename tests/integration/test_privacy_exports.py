"""Tenant exports: asked for by a tenant admin, made in the background, sealed at rest, downloaded once.

An export of tenant A holds every table of A (as JSON and CSV; never a password hash, session or key
secret), A's stored files and a manifest whose checksums verify, and nothing of tenant B. The stored
archive is ciphertext. The link works once, with the right token, for A's admin, until it expires; B's
admin and A's plain users get nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.http.state import PRIVACY_STATE_KEY
from controlplane.objectstore.sealed import MAGIC
from controlplane.platform import Platform
from controlplane.privacy.service import Privacy
from controlplane.settings import Settings
from tests.integration.auth_support import add_user, audit_rows, create_tenant, login_as, tenant_rows
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.privacy_support import (
    ask,
    card_with_image,
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
B_MARK = "bravo-only-7f3a9"


async def test_a_tenant_export_holds_all_of_its_data_and_nothing_of_another_tenant(
    client: Client, platform: Platform, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    bravo = await create_tenant(client, "bravo")
    card_id, image = await card_with_image(client, acme, acme.auth, "acme's first card")
    await add_user(platform, "bravo", f"{B_MARK}@bravo.test", "user")
    _, bravo_image = await card_with_image(client, bravo, bravo.auth, f"notes {B_MARK}")

    created = await ask(client, acme, "/exports", acme.auth)
    assert created["kind"] == "tenant" and created["subject"] is None
    assert created["download_url"].endswith(download_path(created["id"], created["download_token"]))
    ready = await wait_ready(client, acme, created["id"], acme.auth)
    assert ready["bytes"] > 0 and ready["expires_at"] is not None

    # At rest: sealed ciphertext under the tenant's prefix, only the token's hash in the registry.
    row = await export_row(control_dsn, created["id"])
    assert row["object_key"].startswith(f"exports/{acme.id}/{created['id']}.")
    assert row["token_hash"] != created["download_token"].encode() and row["data_key_encrypted"]
    sealed = stored_object(settings, row["object_key"])
    assert sealed is not None and sealed.startswith(MAGIC)
    for plain in (b"PK\x03\x04", b"acme's first card", image[16:48]):
        assert plain not in sealed

    response = await client.get(acme.api(download_path(created["id"], created["download_token"])), headers=acme.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].startswith('attachment; filename="cardvault-acme-export-')
    assert response.headers["x-archive-sha256"] == ready["sha256"] and len(response.content) == ready["bytes"]
    archive, manifest = open_archive(response.content)
    assert manifest["tenant_slug"] == "acme" and manifest["tenant_id"] == str(acme.id)
    assert manifest["kind"] == "tenant" and manifest["schema_revision"] == platform.tenant_scripts.head()
    assert manifest["missing_files"] == [] and manifest["created_at"]

    # Every table of the tenant schema but the internal ones, each as JSON and CSV with the same rows.
    names = {r["relname"] for r in await tenant_rows(platform, "acme", "SELECT relname FROM pg_stat_user_tables")}
    exported = {n.removeprefix("tables/").rsplit(".", 1)[0] for n in archive.namelist() if n.startswith("tables/")}
    assert exported == names - {"tenant_schema_version", "usage_counters"}
    for name in exported:
        rows = table(archive, name)
        assert manifest["tables"][name] == len(rows)
        assert len(list(csv.DictReader(io.StringIO(archive.read(f"tables/{name}.csv").decode())))) == len(rows)
    assert [c["id"] for c in table(archive, "cards")] == [card_id]
    (user,) = table(archive, "users")
    assert user["email"] == acme.admin_email and "password_hash" not in user and "invite_hash" not in user
    for session in table(archive, "auth_sessions"):
        assert not {"refresh_hash", "refresh_seed", "previous_hash"} & set(session)
    files = table(archive, "files")
    assert archive.read(f"files/{files[0]['key']}") == image
    content = everything(archive)
    assert b"$argon2" not in content  # no password hash anywhere
    # Nothing of the other tenant: not its users, notes, image, nor its id.
    for foreign in (B_MARK.encode(), bravo.admin_email.encode(), bravo_image[16:48], str(bravo.id).encode()):
        assert foreign not in content

    # Downloaded once: the archive is gone, the link now answers 410; a forged token 404.
    row = await export_row(control_dsn, created["id"])
    assert row["status"] == "downloaded" and row["downloaded_at"] is not None
    assert row["object_deleted_at"] is not None and stored_object(settings, row["object_key"]) is None
    again = await client.get(acme.api(download_path(created["id"], created["download_token"])), headers=acme.auth)
    assert (again.status_code, again.json()["error"]) == (410, "export_gone")
    forged = await client.get(acme.api(download_path(created["id"], "forged-token")), headers=acme.auth)
    assert (forged.status_code, forged.json()["error"]) == (404, "not_found")
    actions = [r["action"] for r in await audit_rows(platform, "acme") if r["action"].startswith("export.")]
    assert actions == ["export.request", "export.download"]


async def test_expired_links_answer_410_and_their_archives_are_deleted(
    client: Client, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    created = await ask(client, acme, "/exports", acme.auth)
    await wait_ready(client, acme, created["id"], acme.auth)
    key = (await export_row(control_dsn, created["id"]))["object_key"]
    await execute(
        control_dsn,
        "UPDATE tenant_exports SET expires_at = now() - interval '1 second' WHERE id = %s",
        (uuid.UUID(created["id"]),),
    )
    link = acme.api(download_path(created["id"], created["download_token"]))
    expired = await client.get(link, headers=acme.auth)
    assert (expired.status_code, expired.json()["error"]) == (410, "export_gone"), expired.text
    assert stored_object(settings, key) is not None

    privacy: Privacy = client.app.state[PRIVACY_STATE_KEY]
    outcome = await privacy.exports.upkeep()
    assert "1 ended" in outcome and "1 archive(s) deleted" in outcome, outcome
    row = await export_row(control_dsn, created["id"])
    assert row["status"] == "expired" and stored_object(settings, key) is None
    assert (await client.get(link, headers=acme.auth)).status_code == 410


async def test_only_the_tenants_admins_see_ask_for_and_download_its_exports(
    client: Client, platform: Platform, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    bravo = await create_tenant(client, "bravo")
    await add_user(platform, "acme", "plain@acme.test", "user")
    plain = await login_as(client, "acme", "plain@acme.test")
    created = await ask(client, acme, "/exports", acme.auth)
    busy = await client.post(acme.api("/exports"), headers=acme.auth)
    assert (busy.status_code, busy.json()["error"]) == (409, "export_in_progress")
    await wait_ready(client, acme, created["id"], acme.auth)
    link = download_path(created["id"], created["download_token"])

    # Bravo's admin: refused on acme's routes, and acme's export does not exist under bravo.
    for method, path in (
        ("GET", "/exports"),
        ("POST", "/exports"),
        ("GET", f"/exports/{created['id']}"),
        ("GET", link),
    ):
        response = await client.request(method, acme.api(path), headers=bravo.auth)
        assert (response.status_code, response.json()["error"]) == (403, "wrong_tenant"), (method, path)
    for path in (f"/exports/{created['id']}", link):
        response = await client.get(bravo.api(path), headers=bravo.auth)
        assert (response.status_code, response.json()["error"]) == (404, "not_found"), path
    assert (await client.get(bravo.api("/exports"), headers=bravo.auth)).json() == []

    # A plain user of acme: may not export the tenant nor list its exports; the link is no use to them.
    for method, path in (("POST", "/exports"), ("GET", "/exports")):
        response = await client.request(method, acme.api(path), headers=plain)
        assert (response.status_code, response.json()["error"]) == (403, "permission_denied"), (method, path)
    for path in (f"/exports/{created['id']}", link):
        response = await client.get(acme.api(path), headers=plain)
        assert (response.status_code, response.json()["error"]) == (404, "not_found"), path
    assert (await client.get(acme.api("/me/exports"), headers=plain)).json() == []

    # None of that changed anything: acme's admin still downloads it, once.
    assert (await export_row(control_dsn, created["id"]))["status"] == "ready"
    listed = (await client.get(acme.api("/exports"), headers=acme.auth)).json()
    assert [e["id"] for e in listed] == [created["id"]] and "download_token" not in listed[0]
    assert (await client.get(acme.api(link), headers=acme.auth)).status_code == 200


async def test_the_command_line_writes_the_export_archive_to_a_file(
    client: Client, platform: Platform, settings: Settings, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    acme = await create_tenant(client, "acme")
    card_id, image = await card_with_image(client, acme, acme.auth, "exported from the command line")
    target = tmp_path / "acme.zip"
    env = cli_env(control_dsn, tenant_template_name, settings.data_dir)
    result = ok(run_cli(env, "privacy", "export", "acme", "--output", str(target), "--json")).json()
    assert result["path"] == str(target) and target.stat().st_mode & 0o777 == 0o600
    data = target.read_bytes()
    assert len(data) == result["bytes"] and hashlib.sha256(data).hexdigest() == result["sha256"]
    archive, manifest = open_archive(data)
    assert manifest["tenant_slug"] == "acme" and [c["id"] for c in table(archive, "cards")] == [card_id]
    assert image in {archive.read(n) for n in archive.namelist() if n.startswith("files/")}
    row = await export_row(control_dsn, result["export_id"])
    assert row["status"] == "downloaded" and stored_object(settings, row["object_key"]) is None
    actors = {r["actor"] for r in await audit_rows(platform, "acme") if r["action"].startswith("export.")}
    assert len(actors) == 1 and actors.pop().startswith("cli:")
