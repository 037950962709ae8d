"""A dirty legacy installation imported into a tenant that already has data.

Proven here: a dry run writes nothing (tenant database, sequences, stored files and registry compared
before and after) and reports exactly what the import then does; ids of tables that are not empty are
mapped after the existing ones (and the report says so) with every reference following; years and
conditions are normalised where unambiguous ('EX-MT' rounded down to excellent), the rest is NULL and
reported; references to rows that do not exist are NULL; duplicate emails differing in case are merged
into the most recent account, a legacy user whose email the tenant already has into that user;
manufacturers and teams that exist are merged; users without a usable email get their username or a
disabled placeholder; unreadable dates fall back; and the report lists all of it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.context import AuditContext
from controlplane.importer.service import LegacyImporter
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.auth_support import USER_PASSWORD, add_user, create_tenant, login_as, tenant_rows
from tests.integration.auth_support import tenant_superuser_dsn as superuser_dsn
from tests.legacy_support import LEGACY_PASSWORD, dirty_installation, tenant_snapshot

Client = AsyncTestClient[Any]
ACTOR = AuditContext(actor="cli:tests")

EXPECTED_ISSUES = {
    "bad_condition": 1,
    "bad_date": 4,
    "bad_image": 2,
    "bad_year": 5,
    "condition_rounded_down": 1,
    "duplicate_email": 1,
    "duplicate_name": 3,
    "existing_user": 1,
    "missing_email": 2,
    "missing_image": 1,
    "orphan_reference": 6,
    "password_reset": 2,
    "text_cleaned": 1,
    "unknown_role": 1,
}


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


async def test_dirty_import_into_a_tenant_with_data(
    client: Client, platform: Platform, service: TenantService, settings: Settings, control_dsn: str, tmp_path: Path
) -> None:
    legacy = dirty_installation(tmp_path / "legacy")
    tenant = await create_tenant(client, "dirty", tier="enterprise")
    assert (await client.post(tenant.api("/manufacturers"), json={"name": "Donruss"}, headers=tenant.auth)).is_success
    assert (await client.post(tenant.api("/cards"), json={"cardnumber": "MINE"}, headers=tenant.auth)).is_success
    existing_user = await add_user(platform, "dirty", "ADMIN@legacy.test", "user")
    importer = LegacyImporter(platform, service)
    dsn = await superuser_dsn(platform, "dirty")
    files = settings.data_dir / "storage" / str(tenant.id)
    before = await tenant_snapshot(dsn, files, control_dsn)

    dry = await importer.run("dirty", legacy.path, legacy.uploads, dry_run=True, actor=ACTOR)
    assert await tenant_snapshot(dsn, files, control_dsn) == before

    report = await importer.run("dirty", legacy.path, legacy.uploads, dry_run=False, actor=ACTOR)
    assert (dry.dry_run, report.dry_run) == (True, False)
    for field in ("ids", "imported", "merged", "image_bytes", "issue_counts", "issues", "password_resets"):
        assert getattr(dry, field) == getattr(report, field), field
    assert report.ids == {
        "users": "mapped", "manufacturers": "mapped", "teams": "kept", "players": "kept", "cards": "mapped",
    }  # fmt: skip
    assert report.imported == {"users": 5, "manufacturers": 1, "teams": 2, "players": 3, "cards": 7, "images": 1}
    assert report.merged == {"duplicate_email": 1, "existing_user": 1}
    assert report.issue_counts == EXPECTED_ISSUES
    assert report.issues_omitted == 0 and len(report.issues) == sum(EXPECTED_ISSUES.values())
    listed = {(i.kind.value, i.table, i.legacy_id, i.field, i.value) for i in report.issues}
    assert {
        ("orphan_reference", "cards", 3, "player_id", "999"),
        ("orphan_reference", "players", 3, "team_id", "abc"),
        ("bad_year", "cards", 2, "year", "1996a"),
        ("bad_year", "cards", 3, "year", ""),
        ("condition_rounded_down", "cards", 4, "condition", "EX-MT"),
        ("bad_condition", "cards", 6, "condition", "damaged"),
        ("duplicate_email", "users", 5, "email", "Dup@Legacy.test"),
        ("existing_user", "users", 1, "email", "admin@legacy.test"),
        ("missing_image", "cards", 1, "image", "missing.png"),
        ("bad_image", "cards", 3, "image", "../secret.jpg"),
        ("bad_image", "cards", 4, "image", "notes.jpg"),
        ("bad_date", "cards", 2, "updated_at", "04/03/2019"),
    } <= listed
    assert {(r.legacy_id, r.user_id, r.email) for r in report.password_resets} == {
        (2, 3, "hasher@legacy.test"),
        (3, 4, "weird@legacy.test"),
    }

    users = {
        r["id"]: r
        for r in await tenant_rows(
            platform, "dirty", "SELECT id, email, tenant_role, disabled, display_name, password_hash FROM users"
        )
    }
    assert {i: (u["email"], u["tenant_role"], u["disabled"]) for i, u in users.items() if i > existing_user} == {
        3: ("hasher@legacy.test", "collection_manager", False),
        4: ("weird@legacy.test", "user", False),
        5: ("mail@username.test", "user", False),
        6: ("dup@legacy.test", "collection_manager", False),  # editor and user merged: the higher role
        7: ("legacy-user-7@import.invalid", "user", True),
    }
    assert users[3]["password_hash"] == users[4]["password_hash"] == users[7]["password_hash"] == ""
    makers = {r["name"]: r["id"] for r in await tenant_rows(platform, "dirty", "SELECT id, name FROM manufacturers")}
    assert makers == {"Donruss": 1, "Topps": 2}
    teams = await tenant_rows(platform, "dirty", "SELECT id, name, city, league FROM teams ORDER BY id")
    assert teams == [
        {"id": 1, "name": "Yankees", "city": "New York", "league": "AL"},
        {"id": 2, "name": "Giants", "city": None, "league": None},
    ]
    players = await tenant_rows(platform, "dirty", "SELECT id, first_name, team_id, position FROM players ORDER BY id")
    assert [tuple(p.values()) for p in players] == [
        (1, "Babe", 1, "RF"),
        (2, "Willie", None, "CF"),
        (3, None, None, None),
    ]

    (now,) = await tenant_rows(platform, "dirty", "SELECT now() AS now")
    cards = await tenant_rows(
        platform,
        "dirty",
        "SELECT cardnumber, id, player_id, team_id, manufacturer_id, year, condition, notes, created_by, created_at,"
        " updated_at FROM cards WHERE cardnumber <> 'MINE' ORDER BY id",
    )
    rows = {c.pop("cardnumber"): c for c in cards}
    assert [c["id"] for c in rows.values()] == [2, 3, 4, 5, 6, 7, 8]  # after the existing card 1
    c = {k: (v["player_id"], v["team_id"], v["manufacturer_id"], v["year"], v["condition"], v["created_by"])
         for k, v in rows.items()}  # fmt: skip
    assert c == {
        "C1": (1, 1, 2, 1996, "mint", existing_user),
        "C2": (2, 2, 2, None, "near_mint", 6),
        "C3": (None, None, None, None, "near_mint", None),
        "C4": (3, 2, 1, None, "excellent", 6),
        "C5": (None, None, None, None, "poor", 7),
        "C6": (None, None, None, None, None, 3),
        "C7": (None, None, None, 1999, "excellent", 4),
    }
    assert rows["C3"]["notes"] == "hasnul"
    assert rows["C2"]["created_at"] == rows["C2"]["updated_at"] == utc(2019, 3, 13)
    assert rows["C3"]["created_at"] == utc(2019, 3, 4, 12, 14, 56)
    assert rows["C7"]["created_at"] == utc(2019, 3, 4)
    assert abs((rows["C5"]["created_at"] - now["now"]).total_seconds()) < 600  # 'yesterday': the import's time

    admin = tenant.auth
    image = await client.get(tenant.api(f"/cards/{rows['C5']['id']}/image"), headers=admin)
    assert image.status_code == 200 and image.content == legacy.images[5]
    await login_as(client, "dirty", "mail@username.test", LEGACY_PASSWORD)
    await login_as(client, "dirty", "dup@legacy.test", LEGACY_PASSWORD)
    await login_as(client, "dirty", "admin@legacy.test", USER_PASSWORD)  # the existing account keeps its password
    for email in ("legacy-user-7@import.invalid", "weird@legacy.test"):
        refused = await client.post("/t/dirty/auth/token", json={"email": email, "password": LEGACY_PASSWORD})
        assert refused.status_code == 401, email
    new = await client.post(tenant.api("/cards"), json={"cardnumber": "AFTER"}, headers=admin)
    assert new.json()["id"] == 9
