"""Provisioning (controlplane/provisioning/service.py ``create``) against a real PostgreSQL server.

A created tenant is active, has its own database cloned from the template at tenant_schema head and its
own login role that reaches that database and nothing else; its tier's quotas and a succeeded
``provision`` operation are recorded. Bad input, duplicate or concurrent slugs and refused lifecycle
transitions raise the right domain error and leave the registry and the server exactly as they were.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane import db
from controlplane.errors import (
    CardVaultError,
    InvalidSlug,
    InvalidState,
    InvalidTier,
    SlugTaken,
    TenantNotFound,
    ValidationFailed,
)
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant, TenantStatus
from tests.conftest import drop_everything_made_by, make_settings
from tests.integration.tenant_support import (
    TENANT_TABLES,
    VERSION_TABLE,
    assert_tenant_works,
    connect_as,
    database_exists,
    fetch,
    operations,
    quotas,
    refusal,
    role_exists,
    server_databases,
    server_roles,
    snapshot,
    tenant_password,
)


async def test_create_gives_an_active_tenant_cloned_from_the_template(
    service: TenantService, platform: Platform, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme Cards", slug="acme-cards", tier="starter")

    assert tenant.status is TenantStatus.ACTIVE
    assert (tenant.slug, tenant.name) == ("acme-cards", "Acme Cards")
    assert tenant.database_name == tenant.role_name == f"t_{tenant.id.hex}"
    assert tenant.schema_revision == platform.tenant_scripts.head()
    assert tenant.delete_after is None and tenant.suspended_at is None
    assert await database_exists(pg_admin_dsn, tenant.database_name)

    # The clone carries the whole tenant schema, at head, and the tenant role works in it.
    tenant_db = db.with_database(pg_admin_dsn, tenant.database_name)
    tables = {
        r["tablename"] for r in await fetch(tenant_db, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    }
    assert tables >= TENANT_TABLES | {VERSION_TABLE}
    rows = await fetch(tenant_db, sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(VERSION_TABLE)))
    assert [r["version_num"] for r in rows] == [platform.tenant_scripts.head()]
    await assert_tenant_works(platform, pg_admin_dsn, tenant)

    # The ledger: one succeeded provision, with the timing of its steps.
    (op,) = await operations(control_dsn, tenant.id)
    assert (op["kind"], op["state"], op["error"], op["tenant_slug"]) == ("provision", "succeeded", None, "acme-cards")
    assert op["finished_at"] is not None
    assert [s["step"] for s in op["steps"]][:3] == ["template", "create_database", "create_role"]
    assert all(isinstance(s["ms"], int | float) and s["ms"] >= 0 for s in op["steps"])


async def test_tenant_role_is_a_plain_login_role_with_connect_on_its_database_only(
    service: TenantService, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    role = (await server_roles(pg_admin_dsn))[tenant.role_name]
    assert role["rolcanlogin"] and role["has_pw"]
    assert not (role["rolsuper"] or role["rolcreatedb"] or role["rolcreaterole"])

    # REVOKE CONNECT ... FROM PUBLIC: the ACL names the tenant role and no PUBLIC ("=...") entry.
    acl = (await server_databases(pg_admin_dsn))[tenant.database_name]["acl"]
    assert acl is not None, "a NULL datacl means the default ACL: PUBLIC may connect"
    public = [item for item in acl if item.startswith("=")]
    assert not any("c" in item.split("/")[0] for item in public), acl
    assert any(item.startswith(f"{tenant.role_name}=") and "c" in item.split("=")[1].split("/")[0] for item in acl)


async def test_tenant_role_cannot_reach_another_tenant_or_touch_the_version_table(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    first = await service.create(name="First", slug="first", tier="starter")
    second = await service.create(name="Second", slug="second", tier="professional")
    first_pw, second_pw = await tenant_password(platform, first.id), await tenant_password(platform, second.id)
    assert first_pw != second_pw

    for role, password, other in ((first.role_name, first_pw, second), (second.role_name, second_pw, first)):
        reason = await refusal(pg_admin_dsn, role, password, other.database_name)
        assert "permission denied for database" in reason
    # The other tenant's password does not open the first tenant's role either.
    assert "password authentication failed" in await refusal(
        pg_admin_dsn, first.role_name, second_pw, first.database_name
    )

    async with await connect_as(pg_admin_dsn, first.role_name, first_pw, first.database_name) as conn:
        for statement in (
            "UPDATE tenant_schema_version SET version_num = 'x'",
            "INSERT INTO tenant_schema_version VALUES ('x')",
            "DELETE FROM tenant_schema_version",
            "CREATE TABLE sneaky (id int)",
            "DROP TABLE cards",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)
    rows = await fetch(
        db.with_database(pg_admin_dsn, first.database_name), "SELECT version_num FROM tenant_schema_version"
    )
    assert [r["version_num"] for r in rows] == [platform.tenant_scripts.head()]


@pytest.fixture
def migrated_control_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """An empty control database that Platform.open(migrate=True) migrates for real.

    (The shared ``control_dsn`` fixture is a clone, and CREATE DATABASE ... TEMPLATE does not copy the
    database ACL that the registry migration sets.)
    """
    name = f"cvtest_ctl_mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = db.with_database(pg_admin_dsn, name)
    yield dsn
    drop_everything_made_by(dsn)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_tenant_role_cannot_connect_to_the_control_database(
    migrated_control_dsn: str, tenant_template_name: str, pg_admin_dsn: str
) -> None:
    settings = make_settings(migrated_control_dsn, tenant_template_name)
    async with Platform.open(settings, migrate=True) as platform:
        tenant = await TenantService(platform).create(name="Acme", slug="acme", tier="starter")
        password = await tenant_password(platform, tenant.id)
    control_db = psycopg.conninfo.conninfo_to_dict(migrated_control_dsn)["dbname"]
    assert isinstance(control_db, str)
    assert "permission denied for database" in await refusal(pg_admin_dsn, tenant.role_name, password, control_db)


@pytest.mark.parametrize(
    ("tier", "users", "cards"),
    [("starter", 1, 1000), ("professional", 10, 50_000), ("enterprise", None, None)],
)
async def test_quotas_follow_the_tier(
    service: TenantService, control_dsn: str, tier: str, users: int | None, cards: int | None
) -> None:
    tenant = await service.create(name=f"Tier {tier}", slug=f"tier-{tier}", tier=tier)
    assert tenant.subscription_tier.value == tier
    assert tenant.max_users == users
    limits = await quotas(control_dsn, tenant.id)
    assert set(limits) == {"users", "cards", "storage_bytes", "api_calls_per_hour"}
    assert (limits["users"], limits["cards"]) == (users, cards)
    for metered in ("storage_bytes", "api_calls_per_hour"):
        value = limits[metered]
        assert value is not None and value > 0


async def test_names_derive_from_the_id_never_from_the_slug(service: TenantService, pg_admin_dsn: str) -> None:
    tenant = await service.create(name="Robert'); DROP TABLE--", slug="bobby-tables", tier="starter")
    assert tenant.name == "Robert'); DROP TABLE--"
    assert tenant.database_name == f"t_{tenant.id.hex}"
    assert "bobby" not in tenant.database_name and "bobby" not in tenant.role_name
    assert not [name for name in await server_databases(pg_admin_dsn) if "bobby" in name]
    assert not [name for name in await server_roles(pg_admin_dsn) if "bobby" in name]


# -- bad input changes nothing ---------------------------------------------------------------------


@pytest.fixture
async def world(service: TenantService) -> AsyncIterator[dict[str, Tenant]]:
    """Tenants in each state the refusals below need: active, suspended, soft-deleted."""
    active = await service.create(name="Acme", slug="acme", tier="starter")
    await service.create(name="Paused", slug="paused", tier="starter")
    await service.suspend("paused")
    await service.create(name="Going", slug="going", tier="starter")
    await service.delete("going")
    yield {"acme": active}


Call = Callable[[TenantService], Awaitable[Any]]

BAD_CALLS: list[tuple[str, Call, type[CardVaultError], int]] = [
    ("slug-too-short", lambda s: s.create(name="X", slug="ab", tier="starter"), InvalidSlug, 400),
    ("slug-too-long", lambda s: s.create(name="X", slug="a" * 64, tier="starter"), InvalidSlug, 400),
    ("slug-uppercase", lambda s: s.create(name="X", slug="Acme", tier="starter"), InvalidSlug, 400),
    ("slug-trailing-hyphen", lambda s: s.create(name="X", slug="acme-", tier="starter"), InvalidSlug, 400),
    ("slug-reserved-www", lambda s: s.create(name="X", slug="www", tier="starter"), InvalidSlug, 400),
    ("slug-reserved-api", lambda s: s.create(name="X", slug="api", tier="starter"), InvalidSlug, 400),
    ("slug-reserved-admin", lambda s: s.create(name="X", slug="admin", tier="starter"), InvalidSlug, 400),
    (
        "slug-sql",
        lambda s: s.create(name="X", slug="a'; drop database x;--", tier="starter"),
        InvalidSlug,
        400,
    ),
    ("slug-trailing-newline", lambda s: s.create(name="X", slug="newco\n", tier="starter"), InvalidSlug, 400),
    ("slug-not-ascii", lambda s: s.create(name="X", slug="caf\u00e9", tier="starter"), InvalidSlug, 400),
    ("slug-duplicate", lambda s: s.create(name="X", slug="acme", tier="starter"), SlugTaken, 409),
    ("slug-duplicate-of-deleting", lambda s: s.create(name="X", slug="going", tier="starter"), SlugTaken, 409),
    ("tier-unknown", lambda s: s.create(name="X", slug="newco", tier="gold"), InvalidTier, 400),
    ("tier-case", lambda s: s.create(name="X", slug="newco", tier="Starter"), InvalidTier, 400),
    ("name-empty", lambda s: s.create(name="", slug="newco", tier="starter"), ValidationFailed, 400),
    ("name-blank", lambda s: s.create(name="   ", slug="newco", tier="starter"), ValidationFailed, 400),
    ("name-nul", lambda s: s.create(name="Acme\x00", slug="newco", tier="starter"), ValidationFailed, 400),
    ("name-too-long", lambda s: s.create(name="n" * 201, slug="newco", tier="starter"), ValidationFailed, 400),
    ("get-unknown", lambda s: s.get("nobody"), TenantNotFound, 404),
    ("get-nul", lambda s: s.get("acme\x00"), TenantNotFound, 404),
    ("suspend-nul", lambda s: s.suspend("ac\x00me"), TenantNotFound, 404),
    ("purge-sql", lambda s: s.delete("acme' OR '1'='1", now=True), TenantNotFound, 404),
    ("suspend-unknown", lambda s: s.suspend("nobody"), TenantNotFound, 404),
    ("resume-unknown", lambda s: s.resume("nobody"), TenantNotFound, 404),
    ("delete-unknown", lambda s: s.delete("nobody"), TenantNotFound, 404),
    ("purge-unknown", lambda s: s.delete("nobody", now=True), TenantNotFound, 404),
    ("update-unknown", lambda s: s.update("nobody", name="X"), TenantNotFound, 404),
    ("resume-active", lambda s: s.resume("acme"), InvalidState, 409),
    ("suspend-suspended", lambda s: s.suspend("paused"), InvalidState, 409),
    ("delete-twice", lambda s: s.delete("going"), InvalidState, 409),
    ("suspend-deleting", lambda s: s.suspend("going"), InvalidState, 409),
    ("update-deleting", lambda s: s.update("going", name="X"), InvalidState, 409),
    ("rename-to-taken", lambda s: s.update("acme", new_slug="paused"), SlugTaken, 409),
    ("rename-invalid", lambda s: s.update("acme", new_slug="Not Valid"), InvalidSlug, 400),
    ("rename-trailing-newline", lambda s: s.update("acme", new_slug="acme-two\n"), InvalidSlug, 400),
    ("rename-nul-name", lambda s: s.update("acme", name="A\x00"), ValidationFailed, 400),
    ("rename-reserved", lambda s: s.update("acme", new_slug="www"), InvalidSlug, 400),
    ("update-tier-unknown", lambda s: s.update("acme", tier="platinum"), InvalidTier, 400),
    ("update-name-empty", lambda s: s.update("acme", name=""), ValidationFailed, 400),
]


async def test_bad_input_raises_and_changes_nothing(
    service: TenantService, world: dict[str, Tenant], control_dsn: str, pg_admin_dsn: str
) -> None:
    """Every refused call, one after the other in the same world (one setup keeps this fast)."""
    problems: list[str] = []
    for case, call, error, status in BAD_CALLS:
        before = await snapshot(control_dsn, pg_admin_dsn)
        try:
            await call(service)
        except Exception as exc:
            if not isinstance(exc, CardVaultError):
                problems.append(f"{case}: raised {type(exc).__name__}: {exc}".splitlines()[0])
            elif type(exc) is not error or (exc.code, exc.status) != (error.code, status) or not 400 <= status < 500:
                problems.append(f"{case}: raised {type(exc).__name__} {exc.code}/{exc.status}, expected {error.code}")
        else:
            problems.append(f"{case}: no error raised")
        if await snapshot(control_dsn, pg_admin_dsn) != before:
            problems.append(f"{case}: the registry or the server changed")
    assert not problems, "\n".join(problems)


async def test_purge_twice_is_not_found_the_second_time(
    service: TenantService, control_dsn: str, pg_admin_dsn: str
) -> None:
    await service.create(name="Once", slug="once", tier="starter")
    assert await service.delete("once", now=True) is None
    before = await snapshot(control_dsn, pg_admin_dsn)
    with pytest.raises(TenantNotFound):
        await service.delete("once", now=True)
    assert await snapshot(control_dsn, pg_admin_dsn) == before


async def test_http_bad_input_is_a_4xx_json_error_and_changes_nothing(
    client: AsyncTestClient[Any], control_dsn: str, pg_admin_dsn: str
) -> None:
    created = await client.post("/admin/tenants", json={"name": "Acme", "slug": "acme", "tier": "starter"})
    assert created.status_code == 201, created.text
    before = await snapshot(control_dsn, pg_admin_dsn)
    requests: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("POST", "/admin/tenants", {"name": "X", "slug": "a'; drop database x;--"}, 400, "invalid_slug"),
        ("POST", "/admin/tenants", {"name": "X", "slug": "www"}, 400, "invalid_slug"),
        ("POST", "/admin/tenants", {"name": "X", "slug": "acme"}, 409, "slug_taken"),
        ("POST", "/admin/tenants", {"name": "X", "slug": "newco", "tier": "gold"}, 400, "invalid_tier"),
        ("POST", "/admin/tenants", {"name": "", "slug": "newco"}, 400, "validation_failed"),
        ("POST", "/admin/tenants/acme/resume", None, 409, "invalid_state"),
        ("POST", "/admin/tenants/nobody/suspend", None, 404, "tenant_not_found"),
        ("DELETE", "/admin/tenants/nobody", None, 404, "tenant_not_found"),
    ]
    for method, url, body, status, code in requests:
        response = await client.request(method, url, json=body)
        assert (response.status_code, response.json().get("error")) == (status, code), (method, url, response.text)
    assert await snapshot(control_dsn, pg_admin_dsn) == before


# -- concurrency -----------------------------------------------------------------------------------


async def test_concurrent_creates_of_one_slug_have_exactly_one_winner(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    await service.create(name="Warm-up", slug="warm-up", tier="starter")  # the template is built once
    before = await snapshot(control_dsn, pg_admin_dsn)

    results = await asyncio.gather(
        *(service.create(name=f"Rush {i}", slug="rush", tier="starter") for i in range(5)), return_exceptions=True
    )

    winners = [r for r in results if isinstance(r, Tenant)]
    losers = [r for r in results if not isinstance(r, Tenant)]
    assert len(winners) == 1, results
    assert len(losers) == 4 and all(type(e) is SlugTaken and e.status == 409 for e in losers), losers
    (winner,) = winners
    after = await snapshot(control_dsn, pg_admin_dsn)
    assert set(after.databases) - set(before.databases) == {winner.database_name}
    assert set(after.roles) - set(before.roles) == {winner.role_name}
    assert set(before.databases) <= set(after.databases) and set(before.roles) <= set(after.roles)
    (row,) = await fetch(control_dsn, "SELECT count(*) AS n FROM tenant_operations WHERE tenant_slug = 'rush'")
    assert row["n"] == 1
    assert (await service.get("rush")).id == winner.id
    await assert_tenant_works(platform, pg_admin_dsn, winner)


async def test_concurrent_creates_of_different_slugs_all_succeed(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    tenants = await asyncio.gather(*(service.create(name=f"Co {i}", slug=f"co-{i}", tier="starter") for i in range(4)))
    assert len({t.database_name for t in tenants}) == 4
    for tenant in tenants:
        assert await role_exists(pg_admin_dsn, tenant.role_name)
        await assert_tenant_works(platform, pg_admin_dsn, tenant)


async def test_revoked_public_connect_survives_on_the_template(
    service: TenantService, platform: Platform, pg_admin_dsn: str, tenant_template_name: str
) -> None:
    """The template is not a back door: tenant roles cannot connect to it either."""
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    password = await tenant_password(platform, tenant.id)
    reason = await refusal(pg_admin_dsn, tenant.role_name, password, tenant_template_name)
    assert "permission denied for database" in reason
