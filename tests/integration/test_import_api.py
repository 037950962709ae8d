"""``POST /admin/tenants/{slug}/import``: a legacy installation uploaded as multipart (the SQLite file and
its uploads folder as a tar.gz or a zip).

Proven here: a dry run answers the report and writes nothing; the import answers the same report and
the API then serves the cards and their images; both are in the platform audit; the endpoint is the
platform's only (a tenant admin's token, of that tenant or another, is 403; no or a forged token 401); an unknown
tenant is 404, a request without the database part (or with it as a text part) 400, and an archive
with a path leaving it is a 400 ``invalid_archive`` that imports nothing (and is audited as failed).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from tests.integration.auth_support import create_tenant, login_as, tenant_rows
from tests.integration.tenant_support import fetch
from tests.legacy_support import LEGACY_PASSWORD, PNG, Legacy, clean_installation

Client = AsyncTestClient[Any]


def zipped(uploads: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(uploads.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(uploads).as_posix())
    return buffer.getvalue()


def tarred(uploads: Path) -> bytes:
    """A tar.gz of the folder itself (``uploads/...``), as ``tar czf uploads.tgz uploads`` makes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        bundle.add(uploads, arcname="uploads")
    return buffer.getvalue()


def parts(legacy: Legacy, archive: tuple[str, bytes] | None) -> dict[str, tuple[str, bytes, str]]:
    files = {"database": ("cardvault.db", legacy.path.read_bytes(), "application/octet-stream")}
    if archive is not None:
        files["uploads"] = (archive[0], archive[1], "application/octet-stream")
    return files


async def cards_count(platform: Platform, slug: str) -> int:
    (row,) = await tenant_rows(platform, slug, "SELECT count(*) AS n FROM cards")
    return int(row["n"])


async def test_upload_dry_run_then_import(
    client: Client, platform: Platform, service: TenantService, control_dsn: str, tmp_path: Path
) -> None:
    legacy = clean_installation(tmp_path / "legacy")
    await service.create(name="Acme", slug="acme", tier="enterprise")

    dry = await client.post(
        "/admin/tenants/acme/import?dry_run=true", files=parts(legacy, ("uploads.tgz", tarred(legacy.uploads)))
    )
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True and dry.json()["imported"]["images"] == 4
    assert await cards_count(platform, "acme") == 0

    done = await client.post("/admin/tenants/acme/import", files=parts(legacy, ("uploads.zip", zipped(legacy.uploads))))
    assert done.status_code == 200, done.text
    report = done.json()
    assert report["dry_run"] is False
    assert {k: report[k] for k in ("ids", "imported", "issue_counts")} == {
        k: dry.json()[k] for k in ("ids", "imported", "issue_counts")
    }
    assert report["password_resets"] == [
        {
            "legacy_id": 3,
            "user_id": 3,
            "email": "oldtimer@legacy.test",
            "reason": "sha256 hash: cannot be verified safely",
        }
    ]
    boss = await login_as(client, "acme", "boss@legacy.test", LEGACY_PASSWORD)
    assert (await client.get("/t/acme/api/cards/3/image", headers=boss)).content == legacy.images[3]
    assert len((await client.get("/t/acme/api/cards?limit=100", headers=boss)).json()["items"]) == 6
    audit = await fetch(
        control_dsn,
        "SELECT outcome, actor, details FROM platform_audit WHERE action = 'tenant.import' ORDER BY id",
    )
    assert [(a["outcome"], a["actor"], a["details"]["dry_run"]) for a in audit] == [
        ("succeeded", "automation", True),
        ("succeeded", "automation", False),
    ]
    assert audit[1]["details"]["imported"]["cards"] == 6 and audit[1]["details"]["file"] == "cardvault.db"
    assert list((platform.settings.data_dir / "imports").iterdir()) == []  # the uploads are gone


async def test_the_import_endpoint_is_the_platforms_only(
    client: Client, platform: Platform, control_dsn: str, tmp_path: Path
) -> None:
    legacy = clean_installation(tmp_path / "legacy")
    acme = await create_tenant(client, "acme", tier="enterprise")
    other = await create_tenant(client, "other", tier="enterprise")
    for auth in (acme.auth, other.auth):
        response = await client.post("/admin/tenants/acme/import", files=parts(legacy, None), headers=auth)
        assert response.status_code == 403 and response.json()["error"] == "wrong_tenant", response.text
    anonymous = await client.post(
        "/admin/tenants/acme/import", files=parts(legacy, None), headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401
    forged = {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbjp4In0."}
    assert (
        await client.post("/admin/tenants/acme/import", files=parts(legacy, None), headers=forged)
    ).status_code == 401
    unknown = await client.post("/admin/tenants/nope/import", files=parts(legacy, None))
    assert unknown.status_code == 404 and unknown.json()["error"] == "tenant_not_found"
    no_file = await client.post("/admin/tenants/acme/import", files={"uploads": ("u.zip", b"PK", "application/zip")})
    assert no_file.status_code == 400, no_file.text
    not_text = await client.post("/admin/tenants/acme/import", files={"database": (None, b"\x89PNG\xff")})
    assert not_text.status_code == 400 and not_text.json()["error"] == "validation_failed", not_text.text

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as bundle:
        bundle.writestr("jeter.png", PNG + b"fine")
        bundle.writestr("../../escape.png", PNG + b"evil")
    refused = await client.post("/admin/tenants/acme/import", files=parts(legacy, ("evil.zip", evil.getvalue())))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_archive", refused.text
    assert not (tmp_path / "escape.png").exists()
    assert await cards_count(platform, "acme") == 0 and await cards_count(platform, "other") == 0
    (row,) = await fetch(
        control_dsn,
        "SELECT outcome, details FROM platform_audit WHERE action = 'tenant.import' ORDER BY id DESC LIMIT 1",
    )
    assert row["outcome"] == "failed" and row["details"]["error"] == "invalid_archive"
