"""Single-tenant mode (``CARDVAULT_MULTI_TENANT=0``): what a self-hoster moving from the legacy
single-tenant CardVault runs.

Proven here: start-up creates the default tenant once (enterprise, no limits, no administrator), and a
restart finds it; a legacy installation imported into it signs in at ``/api/auth/token`` with the old
passwords and is served at ``/api`` with no slug, subdomain or header (a header naming another tenant is
a 400 ``tenant_conflict``); ``/t/{slug}/api`` and signup are absent (404) and ``POST /admin/tenants`` is a
403 ``single_tenant_mode``; the admin API stays, and so does ``/t/{slug}/auth`` (invitation mails point there).
The last test runs ``cardvault serve`` with the environment variable.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.context import AuditContext
from controlplane.importer.service import LegacyImporter
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, serve
from tests.integration.auth_support import bearer, tenant_rows
from tests.integration.tenant_support import fetch
from tests.legacy_support import LEGACY_PASSWORD, clean_installation

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def sign_in(client: Any, email: str, password: str = LEGACY_PASSWORD) -> dict[str, str]:
    response = await client.post("/api/auth/token", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


async def test_single_tenant_mode_serves_the_default_tenant_at_api(
    settings: Settings, platform: Platform, service: TenantService, control_dsn: str, tmp_path: Path
) -> None:
    single = dataclasses.replace(settings, multi_tenant=False, default_tenant="home")
    async with AsyncTestClient(app=create_app(single)) as client:
        (tenant,) = await fetch(control_dsn, "SELECT slug, status, subscription_tier FROM tenants")
        assert tenant == {"slug": "home", "status": "active", "subscription_tier": "enterprise"}
        quotas = await fetch(control_dsn, "SELECT quota_type, quota_limit FROM tenant_quotas")
        assert {q["quota_type"]: q["quota_limit"] for q in quotas} == {
            "users": None, "cards": None, "storage_bytes": None, "api_calls_per_hour": None,
        }  # fmt: skip
        assert await tenant_rows(platform, "home", "SELECT count(*) AS n FROM users") == [{"n": 0}]
        assert (await client.get("/api/cards")).status_code == 401  # the tenant is resolved; no credential

        legacy = clean_installation(tmp_path / "legacy")
        actor = AuditContext(actor="cli:tests")
        await LegacyImporter(platform, service).run("home", legacy.path, legacy.uploads, dry_run=False, actor=actor)
        boss = await sign_in(client, "boss@legacy.test")
        assert (await client.get("/api/me", headers=boss)).json()["role"] == "tenant_admin"
        assert (await client.get("/api/cards/13/image", headers=boss)).content == legacy.images[13]
        created = await client.post("/api/cards", json={"cardnumber": "HOME-1"}, headers=boss)
        assert created.status_code == 201 and created.json()["id"] == 14
        assert (await client.post("/api/auth/refresh", json={"refresh_token": "x.y"})).status_code == 401
        by_path = await client.post(
            "/t/home/auth/token", json={"email": "boss@legacy.test", "password": LEGACY_PASSWORD}
        )
        assert by_path.status_code == 200  # /t/{slug}/auth stays: invitation mails point there

        conflict = await client.get("/api/cards", headers={**boss, "X-Tenant": "elsewhere"})
        assert conflict.status_code == 400 and conflict.json()["error"] == "tenant_conflict"
        assert (await client.get("/api/cards", headers={**boss, "X-Tenant": "home"})).status_code == 200
        for method, path in (
            ("GET", "/t/home/api/cards"),
            ("POST", "/signup"),
            ("GET", "/signup/slug-available?slug=other"),
        ):
            absent = await client.request(method, path, headers=boss, json={})
            assert absent.status_code == 404 and absent.json()["error"] == "not_found", path
        body = {"name": "Other", "slug": "other", "tier": "starter"}
        refused = await client.post("/admin/tenants", json=body, headers=ADMIN)
        assert refused.status_code == 403 and refused.json()["error"] == "single_tenant_mode"
        listed = await client.get("/admin/tenants", headers=ADMIN)
        assert [t["slug"] for t in listed.json()["items"]] == ["home"]
        assert (await client.get("/admin/tenants/home", headers=ADMIN)).status_code == 200

    # A restart finds the tenant: nothing is created twice, the tokens still work.
    async with AsyncTestClient(app=create_app(single)) as client:
        assert (await client.get("/api/cards/1", headers=boss)).status_code == 200
    operations = await fetch(control_dsn, "SELECT kind FROM tenant_operations")
    assert [o["kind"] for o in operations] == ["provision"]


def test_cardvault_serve_in_single_tenant_mode(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> None:
    with serve(control_dsn, tenant_template_name, tmp_path, CARDVAULT_MULTI_TENANT="0") as served:
        assert httpx.get(f"{served.url}/api/cards").json()["error"] == "unauthorized"
        assert httpx.get(f"{served.url}/t/default/api/cards").status_code == 404
        assert httpx.post(f"{served.url}/signup", json={}).status_code == 404
        login = httpx.post(f"{served.url}/api/auth/token", json={"email": "nobody@home.test", "password": "x" * 12})
        assert login.status_code == 401 and login.json()["error"] == "invalid_credentials"
    assert "cardvault users create --tenant default" in served.log.read_text()
