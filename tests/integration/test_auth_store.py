"""The auth stores on real PostgreSQL: signing keys, platform admins, and the ``cardvault admins`` /
``cardvault keys`` commands (login sessions: ``test_auth_sessions.py``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from controlplane.auth import repository as admins_repo
from controlplane.auth import session_repository, sessions, tokens
from controlplane.auth.passwords import Passwords
from controlplane.auth.repository import AdminExists
from controlplane.auth.tokens import KeyRing, TokenSigner
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import InvalidToken
from controlplane.settings import Settings
from tests.conftest import SECRET_KEY
from tests.integration.cli_support import Result, cli_env, ok, refused, run_cli

BOX = SecretBox(SECRET_KEY)
KEY = sessions.refresh_key(SECRET_KEY)
PASSWORD = "correct horse battery staple"


async def connect(dsn: str) -> AsyncConn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)


async def rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    async with await connect(dsn) as conn:
        cur = await conn.execute(query.encode(), params)
        return await cur.fetchall()


@pytest.fixture
def cheap(settings: Settings) -> Settings:
    """The test settings with argon2 costs a test can afford."""
    return settings.replace(auth=dataclasses.replace(settings.auth, argon2_memory_kib=64, argon2_time_cost=1))


# -- signing keys -------------------------------------------------------------------------------------


async def test_concurrent_loads_create_exactly_one_key(control_dsn: str) -> None:
    conns = [await connect(control_dsn) for _ in range(5)]
    try:
        rings = await asyncio.gather(*(KeyRing.load(conn, BOX) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()
    stored = await rows(control_dsn, "SELECT kid, secret_encrypted, retired_at, verify_until FROM signing_keys")
    assert len(stored) == 1
    (key,) = stored
    assert {ring.current_kid for ring in rings} == {key["kid"]}
    assert len(key["kid"]) == 12 and key["retired_at"] is None and key["verify_until"] is None
    secret = rings[0].get(key["kid"])
    assert secret is not None and len(secret) == 32
    assert base64.urlsafe_b64encode(secret).decode() not in key["secret_encrypted"], "stored encrypted"
    assert base64.urlsafe_b64decode(BOX.decrypt(key["secret_encrypted"])) == secret

    async with await connect(control_dsn) as conn:
        again = await KeyRing.load(conn, BOX)
    assert again.current_kid == key["kid"] and again.get(key["kid"]) == secret


async def test_rotation_old_key_verifies_until_verify_until(control_dsn: str) -> None:
    async with await connect(control_dsn) as conn:
        ring = await KeyRing.load(conn, BOX)
        first = ring.current_kid
        signer = TokenSigner(ring)
        old_token = signer.issue(audience="platform", subject="admin:1", role="super_admin", ttl=600)

        second = await tokens.rotate(conn, BOX, verify_for=600)
        listed = {k.kid: k for k in await admins_repo.list_signing_keys(conn)}
        assert set(listed) == {first, second}
        assert listed[second].active and listed[second].retired_at is None and listed[second].verify_until is None
        assert not listed[first].active
        retired_at, verify_until = listed[first].retired_at, listed[first].verify_until
        assert retired_at is not None and verify_until is not None
        assert 599 <= (verify_until - retired_at).total_seconds() <= 601

        await ring.refresh(conn, BOX)
        assert ring.current_kid == second and ring.kids == {first, second}
        assert (await signer.verify(old_token)).sub == "admin:1", "a rotation logs nobody out"
        new_token = signer.issue(audience="platform", subject="admin:2", role="super_admin", ttl=600)
        assert (await signer.verify(new_token)).sub == "admin:2"

        # A rotation with no grace: the second key stops verifying at once; the first keeps its window.
        third = await tokens.rotate(conn, BOX, verify_for=0)
        await ring.refresh(conn, BOX)
        assert ring.current_kid == third and ring.kids == {first, third}
        with pytest.raises(InvalidToken, match="unknown token signing key"):
            await signer.verify(new_token)
        assert (await signer.verify(old_token)).sub == "admin:1"

        assert await admins_repo.prune_signing_keys(conn) == 1
        assert {k.kid for k in await admins_repo.list_signing_keys(conn)} == {first, third}
        await conn.execute(
            "UPDATE signing_keys SET verify_until = now() - interval '1 second' WHERE kid = %s", (first,)
        )
        assert await admins_repo.prune_signing_keys(conn) == 1
        assert [k.kid for k in await admins_repo.list_signing_keys(conn)] == [third]
        assert await admins_repo.prune_signing_keys(conn) == 0


async def test_unknown_kid_reloads_from_the_database(control_dsn: str) -> None:
    """Another instance rotated: its tokens verify here after one reload."""
    async with await connect(control_dsn) as here, await connect(control_dsn) as there:
        ring = await KeyRing.load(here, BOX)
        reloads = 0

        async def reload() -> None:
            nonlocal reloads
            reloads += 1
            await ring.refresh(here, BOX)

        local = TokenSigner(ring, reload)
        await tokens.rotate(there, BOX, verify_for=60)
        remote = TokenSigner(await KeyRing.load(there, BOX))
        token = remote.issue(audience="tenant", subject="user:1", role="user", ttl=60, tenant_id=uuid.uuid4())
        assert (await local.verify(token)).sub == "user:1"
        assert (await local.verify(token)).sub == "user:1"
        assert reloads == 1 and ring.current_kid == remote.ring.current_kid


async def test_every_active_key_retires_on_rotation(control_dsn: str) -> None:
    async with await connect(control_dsn) as conn:
        for kid in ("manual-1", "manual-2"):  # two active keys (e.g. restored from a backup)
            await conn.execute(
                "INSERT INTO signing_keys (kid, secret_encrypted) VALUES (%s, %s)",
                (kid, BOX.encrypt(base64.urlsafe_b64encode(kid.encode() * 4).decode())),
            )
        ring = await KeyRing.load(conn, BOX)
        assert ring.current_kid == "manual-2" and ring.kids == {"manual-1", "manual-2"}
        new = await tokens.rotate(conn, BOX, verify_for=30)
        assert [k.kid for k in await admins_repo.list_signing_keys(conn) if k.active] == [new]


# -- platform admins ---------------------------------------------------------------------------------------


async def test_admin_repository(control_dsn: str, cheap: Settings) -> None:
    passwords = Passwords(cheap.auth)
    async with await connect(control_dsn) as conn:
        admin = await admins_repo.insert_admin(
            conn, email="Root@Example.com", password_hash=await passwords.hash(PASSWORD)
        )
        assert admin.email == "Root@Example.com" and not admin.disabled and admin.last_login_at is None
        assert "password_hash" not in admin.__struct_fields__

        for email in ("root@example.com", "ROOT@EXAMPLE.COM"):
            with pytest.raises(AdminExists) as caught:
                await admins_repo.insert_admin(conn, email=email, password_hash="x")
            assert caught.value.status == 409 and caught.value.code == "admin_exists"
        other = await admins_repo.insert_admin(conn, email="alice@example.com", password_hash="x")

        assert await admins_repo.get_admin_by_email(conn, "root@EXAMPLE.com") == admin
        assert await admins_repo.get_admin_by_email(conn, "nobody@example.com") is None
        assert await admins_repo.get_admin(conn, admin.id) == admin
        assert await admins_repo.get_admin(conn, uuid.uuid4()) is None
        assert [a.email for a in await admins_repo.list_admins(conn)] == ["alice@example.com", "Root@Example.com"]

        login_key, found = await admins_repo.admin_login_lookup(conn, "ROOT@example.com")
        assert login_key == "root@example.com" and found is not None and found[0] == admin
        assert await passwords.verify(found[1], PASSWORD)
        assert await admins_repo.admin_login_lookup(conn, "Nobody@example.com") == ("nobody@example.com", None)

        disabled = await admins_repo.set_admin_disabled(conn, "root@example.com", True)
        assert disabled is not None and disabled.disabled and disabled.id == admin.id
        assert await admins_repo.set_admin_disabled(conn, "nobody@example.com", True) is None
        enabled = await admins_repo.set_admin_disabled(conn, "ROOT@example.com", False)
        assert enabled is not None and not enabled.disabled

        assert await admins_repo.set_admin_password(conn, admin.id, await passwords.hash("another long password"))
        assert not await admins_repo.set_admin_password(conn, uuid.uuid4(), "x")
        _, found = await admins_repo.admin_login_lookup(conn, "root@example.com")
        assert found is not None and await passwords.verify(found[1], "another long password")
        assert not await passwords.verify(found[1], PASSWORD)

        await admins_repo.touch_login(conn, admin.id)
        touched = await admins_repo.get_admin(conn, admin.id)
        assert touched is not None and touched.last_login_at is not None
        untouched = await admins_repo.get_admin(conn, other.id)
        assert untouched is not None and untouched.last_login_at is None


# -- CLI ---------------------------------------------------------------------------------------------------


@pytest.fixture
def run(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Any:
    env = cli_env(
        control_dsn,
        tenant_template_name,
        tmp_path / "data",
        CARDVAULT_ARGON2_MEMORY_KIB="64",
        CARDVAULT_ARGON2_TIME_COST="1",
        USER="ops",
        LOGNAME="ops",
    )

    def call(*args: str, stdin: str | None = None) -> Result:
        return run_cli(env, *args, stdin=stdin)

    return call


async def test_cli_admins(run: Any, control_dsn: str, cheap: Settings) -> None:
    created = ok(run("admins", "create", "--email", " Root@Example.com ", "--json", stdin=f"{PASSWORD}\nignored\n"))
    admin = created.json()
    assert admin["email"] == "Root@Example.com" and admin["disabled"] is False
    (stored,) = await rows(control_dsn, "SELECT id, password_hash FROM platform_admins")
    assert str(stored["id"]) == admin["id"] and stored["password_hash"].startswith("$argon2id$v=19$m=64,t=1,p=1$")
    passwords = Passwords(cheap.auth)
    assert await passwords.verify(stored["password_hash"], PASSWORD), "the first line of stdin, without newline"

    refused(run("admins", "create", "--email", "root@example.COM", stdin=f"{PASSWORD}\n"), "admin_exists")
    body = refused(run("admins", "create", "--email", "bob@example.com", stdin="short\n"), "validation_failed")
    assert "12" in body["detail"]
    refused(run("admins", "create", "--email", "not-an-email", stdin=f"{PASSWORD}\n"), "validation_failed")
    refused(run("admins", "disable", "--email", "nobody@example.com"), "admin_not_found")
    ok(run("admins", "create", "--email", "alice@example.com", stdin=f"{PASSWORD}\n"))

    listed = ok(run("admins", "list", "--json")).json()
    assert [a["email"] for a in listed] == ["alice@example.com", "Root@Example.com"]
    table = ok(run("admins", "list")).stdout.splitlines()
    assert table[0].split() == ["ID", "EMAIL", "DISABLED", "CREATED_AT", "LAST_LOGIN_AT"] and len(table) == 3

    admin_id = uuid.UUID(admin["id"])
    async with await connect(control_dsn) as conn:
        live, _ = await sessions.open_session(
            conn, "platform_sessions", admin_id, key=KEY, ttl=600, source_address=None, user_agent=None
        )
    assert ok(run("admins", "disable", "--email", "root@example.com", "--json")).json()["disabled"] is True
    async with await connect(control_dsn) as conn:
        assert not await session_repository.is_active(conn, "platform_sessions", live), "disabling ends the sessions"
        live, _ = await sessions.open_session(
            conn, "platform_sessions", admin_id, key=KEY, ttl=600, source_address=None, user_agent=None
        )
    assert ok(run("admins", "enable", "--email", "ROOT@example.com", "--json")).json()["disabled"] is False

    ok(run("admins", "set-password", "--email", "root@example.com", stdin="a brand new password\n"))
    (stored,) = await rows(control_dsn, "SELECT password_hash FROM platform_admins WHERE id = %s", (admin_id,))
    assert await passwords.verify(stored["password_hash"], "a brand new password")
    async with await connect(control_dsn) as conn:
        assert not await session_repository.is_active(conn, "platform_sessions", live), (
            "a new password ends the sessions"
        )

    audit = await rows(control_dsn, "SELECT actor, action, entity, entity_id, details FROM platform_audit ORDER BY id")
    assert [a["action"] for a in audit] == [
        "admin.create",
        "admin.create",
        "admin.disable",
        "admin.enable",
        "admin.set_password",
    ]
    assert {a["actor"] for a in audit} == {"cli:ops"}
    assert audit[0]["entity"] == "platform_admin" and audit[0]["entity_id"] == admin["id"]
    assert audit[0]["details"] == {"email": "Root@Example.com"}
    assert audit[2]["details"] == {"email": "Root@Example.com", "sessions_revoked": 1}
    assert all(PASSWORD not in str(a) for a in audit)


async def test_cli_keys(run: Any, control_dsn: str) -> None:
    assert ok(run("keys", "list", "--json")).json() == []
    first = ok(run("keys", "rotate", "--json")).json()
    assert first["previous_keys_verify_for"] == 900 + 120
    human = ok(run("keys", "rotate")).stdout
    assert "new signing key" in human and "1020 s" in human

    listed = ok(run("keys", "list", "--json")).json()
    assert len(listed) == 2 and listed[0]["kid"] == first["kid"]
    assert listed[0]["active"] is False and listed[0]["verify_until"] is not None
    assert listed[1]["active"] is True and listed[1]["kid"] in human
    assert all("secret" not in key for key in listed)
    table = ok(run("keys", "list")).stdout.splitlines()
    assert table[0].split() == ["KID", "ACTIVE", "CREATED_AT", "RETIRED_AT", "VERIFY_UNTIL"] and len(table) == 3

    # The service's key ring picks up the key the CLI made.
    async with await connect(control_dsn) as conn:
        ring = await KeyRing.load(conn, BOX)
    assert ring.current_kid == listed[1]["kid"] and ring.kids == {k["kid"] for k in listed}

    assert ok(run("keys", "prune", "--json")).json() == {"deleted": 0}
    async with await connect(control_dsn) as conn:
        await conn.execute("UPDATE signing_keys SET verify_until = now() WHERE verify_until IS NOT NULL")
    assert ok(run("keys", "prune")).stdout.strip() == "deleted 1 expired signing key(s)"
    assert [k["kid"] for k in ok(run("keys", "list", "--json")).json()] == [listed[1]["kid"]]

    audit = await rows(control_dsn, "SELECT actor, action, entity_id, details FROM platform_audit ORDER BY id")
    assert [(a["action"], a["entity_id"]) for a in audit] == [
        ("signing_key.rotate", first["kid"]),
        ("signing_key.rotate", listed[1]["kid"]),
        ("signing_key.prune", None),
        ("signing_key.prune", None),
    ]
    assert audit[3]["details"] == {"deleted": 1} and {a["actor"] for a in audit} == {"cli:ops"}
