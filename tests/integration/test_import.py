"""A clean legacy installation imported into an empty tenant (``controlplane.importer``).

Proven here: every relationship is kept (cards -> players -> teams, manufacturers, created_by) under
the legacy ids, and the identity sequences continue after them (new rows made through the API get the
next ids); images are copied into the tenant's storage, one object and ``files`` row per card, and the
API serves them; legacy bcrypt users sign in with their old passwords and their hash becomes argon2id at
that first sign-in, while a sha256 user cannot sign in, is reported, and gets in once an admin resends
the invitation; the import is in the tenant's audit log; another tenant is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.context import AuditContext
from controlplane.importer.models import ImportReport
from controlplane.importer.service import LegacyImporter
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.auth_support import create_tenant, login_as, tenant_rows, tenant_superuser_dsn
from tests.legacy_support import (
    LEGACY_PASSWORD,
    PNG,
    Legacy,
    clean_installation,
    stored_files,
    tenant_snapshot,
)

Client = AsyncTestClient[Any]
ACTOR = AuditContext(actor="cli:tests", actor_label="tests")
TABLES = ("users", "manufacturers", "teams", "players", "cards")


@pytest.fixture
def legacy(tmp_path: Path) -> Legacy:
    return clean_installation(tmp_path / "legacy")


async def import_into(platform: Platform, service: TenantService, slug: str, legacy: Legacy) -> ImportReport:
    return await LegacyImporter(platform, service).run(slug, legacy.path, legacy.uploads, dry_run=False, actor=ACTOR)


def storage_dir(settings: Settings, tenant_id: object) -> Path:
    return settings.data_dir / "storage" / str(tenant_id)


async def test_clean_import_keeps_ids_relationships_and_images(
    client: Client, platform: Platform, service: TenantService, settings: Settings, legacy: Legacy
) -> None:
    other = await create_tenant(client, "other")
    card = await client.post(other.api("/cards"), json={"cardnumber": "O-1"}, headers=other.auth)
    headers = {**other.auth, "content-type": "image/png"}
    assert (
        await client.put(other.api(f"/cards/{card.json()['id']}/image"), content=PNG + b"x", headers=headers)
    ).is_success
    other_dsn = await tenant_superuser_dsn(platform, "other")
    other_before = await tenant_snapshot(other_dsn, storage_dir(settings, other.id))
    acme = await service.create(name="Acme", slug="acme", tier="enterprise")

    report = await import_into(platform, service, "acme", legacy)

    assert report.ids == dict.fromkeys(TABLES, "kept")
    assert report.imported == {"users": 4, "manufacturers": 3, "teams": 3, "players": 5, "cards": 6, "images": 4}
    assert report.issue_counts == {"password_reset": 1}
    assert report.image_bytes == sum(len(legacy.images[c]) for c in (1, 2, 3, 13))
    cards = await tenant_rows(
        platform,
        "acme",
        "SELECT c.id, c.cardnumber, c.player_id, c.team_id, c.manufacturer_id, c.year, c.condition, c.notes,"
        " c.created_by, p.team_id AS player_team, u.email AS creator FROM cards c"
        " LEFT JOIN players p ON p.id = c.player_id LEFT JOIN users u ON u.id = c.created_by ORDER BY c.id",
    )
    players = {p[0]: p for p in legacy.players}
    emails = {u[0]: u[2] for u in legacy.users}
    conditions = {"Mint": "mint", "NM": "near_mint", "near mint": "near_mint", "EX": "excellent"}
    assert cards == [
        {
            "id": c[0], "cardnumber": c[1], "player_id": c[2], "team_id": c[3], "manufacturer_id": c[4],
            "year": c[5], "condition": conditions.get(c[7], c[7]), "notes": c[8], "created_by": c[9],
            "player_team": players[c[2]][3], "creator": emails[c[9]],
        }
        for c in legacy.cards
    ]  # fmt: skip
    teams = await tenant_rows(platform, "acme", "SELECT id, name, city, league FROM teams ORDER BY id")
    assert [tuple(t.values()) for t in teams] == legacy.teams
    makers = await tenant_rows(platform, "acme", "SELECT id, name FROM manufacturers ORDER BY id")
    assert [tuple(m.values()) for m in makers] == legacy.manufacturers

    # The legacy admin signs in with the old password; the API serves the cards and their images.
    boss = await login_as(client, "acme", "boss@legacy.test", LEGACY_PASSWORD)
    detail = (await client.get("/t/acme/api/cards/2", headers=boss)).json()
    assert detail["created_at"].startswith("2019-04-02T09:00:00") and detail["updated_at"].startswith("2019-05-01T10")
    assert detail["image"]["content_type"] == "image/jpeg"
    for card_id, data in legacy.images.items():
        image = await client.get(f"/t/acme/api/cards/{card_id}/image", headers=boss)
        assert image.status_code == 200 and image.content == data, card_id
    files = await tenant_rows(platform, "acme", "SELECT key, card_id, bytes FROM files ORDER BY card_id")
    assert [f["card_id"] for f in files] == [1, 2, 3, 13]
    assert sorted(stored_files(storage_dir(settings, acme.id))) == sorted(f["key"] for f in files)
    assert len({f["key"] for f in files}) == 4  # cards 1 and 13 show one picture, each owns its object

    # The sequences continue after the legacy ids.
    for path, body, expected in (
        ("/cards", {"cardnumber": "NEW"}, 14),
        ("/players", {"last_name": "New"}, 6),
        ("/teams", {"name": "New"}, 4),
        ("/manufacturers", {"name": "New"}, 4),
        ("/users", {"email": "new@acme.test", "role": "user", "password": "a new user password"}, 5),
    ):
        created = await client.post(f"/t/acme/api{path}", json=body, headers=boss)
        assert created.status_code == 201, created.text
        assert created.json()["id"] == expected, path

    (entry,) = await tenant_rows(
        platform, "acme", "SELECT actor, details FROM audit_log WHERE action = 'legacy.import'"
    )
    assert entry["actor"] == "cli:tests" and entry["details"]["imported"]["cards"] == 6
    assert await tenant_snapshot(other_dsn, storage_dir(settings, other.id)) == other_before


async def test_legacy_passwords_bcrypt_upgraded_at_sign_in_sha256_must_reset(
    client: Client, platform: Platform, service: TenantService, legacy: Legacy
) -> None:
    await service.create(name="Acme", slug="acme", tier="enterprise")
    report = await import_into(platform, service, "acme", legacy)
    (reset,) = report.password_resets
    assert (reset.legacy_id, reset.user_id, reset.email) == (3, 3, "oldtimer@legacy.test")
    assert "sha256" in reset.reason

    async def stored_hash(email: str) -> str:
        (row,) = await tenant_rows(platform, "acme", "SELECT password_hash FROM users WHERE email = %s", (email,))
        return str(row["password_hash"])

    assert (await stored_hash("fan@legacy.test")).startswith("$2b$")
    wrong = await client.post("/t/acme/auth/token", json={"email": "fan@legacy.test", "password": "not it at all"})
    assert wrong.status_code == 401
    assert (await stored_hash("fan@legacy.test")).startswith("$2b$")  # a failed sign-in changes nothing
    fan = await login_as(client, "acme", "fan@legacy.test", LEGACY_PASSWORD)
    assert (await stored_hash("fan@legacy.test")).startswith("$argon2id$")
    await login_as(client, "acme", "fan@legacy.test", LEGACY_PASSWORD)  # and the new hash verifies
    assert (await client.get("/t/acme/api/me", headers=fan)).json()["role"] == "user"
    editor = await login_as(client, "acme", "ed@legacy.test", LEGACY_PASSWORD)  # 'Ed@Legacy.test', any case
    assert (await client.get("/t/acme/api/me", headers=editor)).json()["role"] == "collection_manager"

    # The sha256 user cannot sign in, not even with the right password; an admin resends the invitation.
    refused = await client.post(
        "/t/acme/auth/token", json={"email": "oldtimer@legacy.test", "password": LEGACY_PASSWORD}
    )
    assert refused.status_code == 401
    boss = await login_as(client, "acme", "boss@legacy.test", LEGACY_PASSWORD)
    assert (await client.get(f"/t/acme/api/users/{reset.user_id}", headers=boss)).json()["invited"] is True
    invitation = await client.post(f"/t/acme/api/users/{reset.user_id}/invitation", headers=boss)
    assert invitation.status_code == 200, invitation.text
    accepted = await client.post(
        "/t/acme/auth/invitations/accept",
        json={"invite_token": invitation.json()["invite_token"], "password": "my brand new password"},
    )
    assert accepted.status_code == 200, accepted.text
    await login_as(client, "acme", "oldtimer@legacy.test", "my brand new password")
