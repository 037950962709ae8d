"""The auth stores on real PostgreSQL: signing keys, login sessions (both tables), platform admins, and the
``cardvault admins`` / ``cardvault keys`` commands.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from controlplane.auth import repository as admins_repo
from controlplane.auth import session_repository, sessions, tokens
from controlplane.auth.passwords import Passwords
from controlplane.auth.repository import AdminExists
from controlplane.auth.session_repository import SessionTable
from controlplane.auth.sessions import RefreshReplayed
from controlplane.auth.tokens import KeyRing, TokenSigner
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import InvalidToken
from controlplane.schemas.alembic_runner import tenant_scripts
from controlplane.settings import ProvisioningSettings, Settings
from tests.conftest import SECRET_KEY
from tests.integration.cli_support import Result, cli_env, ok, refused, run_cli
from tests.integration.tenant_support import create_database, drop_database

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


# -- sessions --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenant_template(pg_admin_dsn: str) -> Iterator[str]:
    """A database at tenant_schema head, cloned per test."""
    name = f"cvtest_authtpl_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name)
    try:
        tenant_scripts(ProvisioningSettings()).upgrade(dsn)
        yield name
    finally:
        drop_database(pg_admin_dsn, name)


@pytest.fixture
def tenant_dsn(pg_admin_dsn: str, tenant_template: str) -> Iterator[str]:
    name = f"cvtest_auth_{uuid.uuid4().hex[:16]}"
    dsn = create_database(pg_admin_dsn, name, template=tenant_template)
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, name)


@dataclasses.dataclass
class Store:
    dsn: str
    table: SessionTable
    user_id: uuid.UUID | int
    other_user_id: uuid.UUID | int


@pytest.fixture(params=["platform_sessions", "auth_sessions"])
async def store(request: pytest.FixtureRequest, control_dsn: str) -> AsyncIterator[Store]:
    """A session table with two users in it: platform admins, or users of a scratch tenant database."""
    if request.param == "platform_sessions":
        async with await connect(control_dsn) as conn:
            one = await admins_repo.insert_admin(conn, email="one@example.com", password_hash="x")
            two = await admins_repo.insert_admin(conn, email="two@example.com", password_hash="x")
        yield Store(control_dsn, "platform_sessions", one.id, two.id)
    else:
        dsn = request.getfixturevalue("tenant_dsn")
        ids = []
        async with await connect(dsn) as conn:
            for email in ("one@example.com", "two@example.com"):
                cur = await conn.execute(
                    "INSERT INTO users (email, password_hash) VALUES (%s, '') RETURNING id", (email,)
                )
                row = await cur.fetchone()
                assert row is not None
                ids.append(row["id"])
        yield Store(dsn, "auth_sessions", ids[0], ids[1])


async def _row(store: Store, session_id: uuid.UUID) -> dict[str, Any]:
    query = sql.SQL("SELECT *, host(source_address) AS address FROM {} WHERE id = %s").format(
        sql.Identifier(store.table)
    )
    async with await connect(store.dsn) as conn:
        cur = await conn.execute(query, (session_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def _open(store: Store, ttl: float = 3600) -> tuple[uuid.UUID, str]:
    async with await connect(store.dsn) as conn:
        return await sessions.open_session(
            conn, store.table, store.user_id, key=KEY, ttl=ttl, source_address=None, user_agent=None
        )


async def _rotate(store: Store, token: str, grace: float = 0.0, key: bytes = KEY) -> str:
    async with await connect(store.dsn) as conn:
        _, new = await sessions.rotate_and_commit(conn, store.table, token, key=key, grace=grace)
    return new


async def _active(store: Store, session_id: uuid.UUID) -> bool:
    async with await connect(store.dsn) as conn:
        return await session_repository.is_active(conn, store.table, session_id)


async def test_open_and_rotate(store: Store) -> None:
    async with await connect(store.dsn) as conn:
        session_id, token = await sessions.open_session(
            conn, store.table, store.user_id, key=KEY, ttl=3600, source_address="192.0.2.7", user_agent="pytest/1"
        )
    head, _, secret = token.partition(".")
    assert head == str(session_id) and len(secret) >= 43
    row = await _row(store, session_id)
    assert bytes(row["refresh_hash"]) == hashlib.sha256(secret.encode()).digest(), "only the hash is stored"
    assert secret.encode() not in bytes(row["refresh_seed"]) and row["generation"] == 0
    assert row["user_id"] == store.user_id and row["address"] == "192.0.2.7" and row["user_agent"] == "pytest/1"
    assert row["revoked_at"] is None and 3590 < (row["expires_at"] - row["created_at"]).total_seconds() <= 3600

    async with await connect(store.dsn) as conn:
        assert await session_repository.is_active(conn, store.table, session_id)
        async with conn.transaction():
            session, second = await sessions.rotate(conn, store.table, token, key=KEY)
        assert session.id == session_id and session.user_id == store.user_id
        assert session.expires_at == row["expires_at"], "refreshing does not extend the session"
        assert second != token and second.startswith(f"{session_id}.")
        session, third = await sessions.rotate_and_commit(conn, store.table, second, key=KEY)
        assert third not in (token, second)
        assert await session_repository.is_active(conn, store.table, session_id)
    rotated = await _row(store, session_id)
    assert rotated["last_used_at"] >= row["last_used_at"] and rotated["generation"] == 2


async def test_replayed_refresh_token_revokes_the_session(store: Store) -> None:
    async with await connect(store.dsn) as conn:
        session_id, first = await sessions.open_session(
            conn, store.table, store.user_id, key=KEY, ttl=3600, source_address=None, user_agent=None
        )
        _, second = await sessions.rotate_and_commit(conn, store.table, first, key=KEY)

        # The caller's pattern: keep the revocation, then report the replay.
        replayed: RefreshReplayed | None = None
        async with conn.transaction():
            try:
                await sessions.rotate(conn, store.table, first, key=KEY)
            except RefreshReplayed as exc:
                replayed = exc
        assert replayed is not None and replayed.code == "invalid_token" and replayed.status == 401
        assert replayed.session_id == session_id and replayed.user_id == store.user_id
        assert not await session_repository.is_active(conn, store.table, session_id)
        # The thief's copy and the legitimate holder's current token are both dead now.
        with pytest.raises(InvalidToken, match="revoked"):
            await sessions.rotate_and_commit(conn, store.table, second, key=KEY)
    assert (await _row(store, session_id))["revoked_at"] is not None


async def test_rotate_and_commit_commits_the_replay_revocation(store: Store) -> None:
    session_id, first = await _open(store)
    await _rotate(store, first)
    with pytest.raises(RefreshReplayed):
        await _rotate(store, first)
    assert (await _row(store, session_id))["revoked_at"] is not None


async def test_the_spent_token_gets_the_same_successor_within_the_grace(store: Store) -> None:
    session_id, first = await _open(store)
    second = await _rotate(store, first, grace=60)
    # The first response was lost; the client retries with the token it still has.
    assert await _rotate(store, first, grace=60) == second
    assert await _rotate(store, first, grace=60) == second
    assert await _active(store, session_id)
    assert (await _row(store, session_id))["generation"] == 1, "a retry does not rotate again"
    third = await _rotate(store, second, grace=60)
    assert third not in (first, second)
    # Two rotations back is no retry: only the secret rotated away last has a grace.
    with pytest.raises(RefreshReplayed):
        await _rotate(store, first, grace=60)
    assert not await _active(store, session_id)


async def test_the_spent_token_after_the_grace_is_a_replay(store: Store) -> None:
    session_id, first = await _open(store)
    await _rotate(store, first, grace=60)
    async with await connect(store.dsn) as conn:  # the rotation happened two minutes ago
        await conn.execute(
            sql.SQL("UPDATE {} SET rotated_at = rotated_at - interval '2 minutes' WHERE id = %s").format(
                sql.Identifier(store.table)
            ),
            (session_id,),
        )
    with pytest.raises(RefreshReplayed):
        await _rotate(store, first, grace=60)
    assert not await _active(store, session_id)


async def test_concurrent_rotations_of_one_token_both_get_the_successor(store: Store) -> None:
    session_id, token = await _open(store, ttl=60)
    a, b = await connect(store.dsn), await connect(store.dsn)
    try:
        results = await asyncio.gather(
            sessions.rotate_and_commit(a, store.table, token, key=KEY, grace=30),
            sessions.rotate_and_commit(b, store.table, token, key=KEY, grace=30),
        )
    finally:
        await a.close()
        await b.close()
    assert results[0][1] == results[1][1] != token
    assert await _active(store, session_id)
    assert await _rotate(store, results[0][1]) != results[0][1]


async def test_without_grace_concurrent_rotations_let_one_win(store: Store) -> None:
    _, token = await _open(store, ttl=60)
    a, b = await connect(store.dsn), await connect(store.dsn)
    try:
        results = await asyncio.gather(
            sessions.rotate_and_commit(a, store.table, token, key=KEY),
            sessions.rotate_and_commit(b, store.table, token, key=KEY),
            return_exceptions=True,
        )
    finally:
        await a.close()
        await b.close()
    assert sum(isinstance(r, tuple) for r in results) == 1
    assert sum(isinstance(r, RefreshReplayed) for r in results) == 1


def _forged(session_id: uuid.UUID, current: str) -> list[str]:
    """Refresh tokens for the session that were never issued (the session id is public)."""
    generation, _, mac = current.partition(".")[2].partition(".")
    other_key = sessions.refresh_key("another secret key of 32 characters or more")
    return [
        f"{session_id}.anything",
        f"{session_id}.{generation}.{'A' * len(mac)}",
        f"{session_id}.0.{mac}",  # a real MAC under another generation
        f"{session_id}.{int(generation) + 1}.{mac}",
        f"{session_id}.99999999999.{mac}",
        f"{session_id}.-1.{mac}",
        f"{session_id}.{current.partition('.')[2]}x",
        f"{session_id}.0.{sessions._mac(other_key, b'x' * 32, 0)}",
    ]


async def test_a_never_issued_secret_is_401_and_leaves_the_session_alone(store: Store) -> None:
    session_id, first = await _open(store)
    second = await _rotate(store, first, grace=60)
    before = await _row(store, session_id)
    for token in _forged(session_id, second):
        with pytest.raises(InvalidToken, match="invalid refresh token") as caught:
            await _rotate(store, token, grace=60)
        assert not isinstance(caught.value, RefreshReplayed), token
    assert await _row(store, session_id) == before, "not revoked, not rotated, not even touched"
    assert await _rotate(store, second) not in (first, second)


async def test_a_legacy_random_secret_moves_to_derived_secrets(store: Store) -> None:
    """Sessions opened before derived secrets hold a random secret (``refresh_seed`` NULL)."""
    session_id, _ = await _open(store)
    legacy = "a-random-secret-of-before-" + uuid.uuid4().hex
    async with await connect(store.dsn) as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET refresh_hash = %s, refresh_seed = NULL WHERE id = %s").format(
                sql.Identifier(store.table)
            ),
            (hashlib.sha256(legacy.encode()).digest(), session_id),
        )
    with pytest.raises(InvalidToken, match="invalid refresh token"):
        await _rotate(store, f"{session_id}.0.anything", grace=60)
    second = await _rotate(store, f"{session_id}.{legacy}", grace=60)
    assert await _rotate(store, f"{session_id}.{legacy}", grace=60) == second
    row = await _row(store, session_id)
    assert row["refresh_seed"] is not None and row["generation"] == 1
    with pytest.raises(RefreshReplayed):
        await _rotate(store, f"{session_id}.{legacy}")  # outside a (zero) grace: a replay
    assert not await _active(store, session_id)


async def test_another_key_cannot_rebuild_the_successor(store: Store) -> None:
    """A changed CARDVAULT_SECRET_KEY: the retry gets a 401, not a token that does not work (nor a revocation)."""
    session_id, first = await _open(store)
    await _rotate(store, first, grace=60)
    other = sessions.refresh_key("another secret key of 32 characters or more")
    with pytest.raises(InvalidToken, match="just used") as caught:
        await _rotate(store, first, grace=60, key=other)
    assert not isinstance(caught.value, RefreshReplayed)
    assert await _active(store, session_id)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "nodot",
        "not-a-uuid.secret",
        # Fixed ids (no session has them): test ids must be the same in every collection (pytest-xdist).
        f"{uuid.UUID(int=1)}.",
        f"{uuid.UUID(int=2)}",
        ".secret",
        f"{uuid.UUID(int=3)}." + "x" * 300,
    ],
)
async def test_malformed_or_unknown_refresh_tokens(store: Store, token: str) -> None:
    async with await connect(store.dsn) as conn:
        with pytest.raises(InvalidToken):
            await sessions.rotate_and_commit(conn, store.table, token, key=KEY)
        with pytest.raises(InvalidToken, match="not found"):
            await sessions.rotate_and_commit(conn, store.table, f"{uuid.uuid4()}.secret", key=KEY)


async def test_expired_session(store: Store) -> None:
    async with await connect(store.dsn) as conn:
        session_id, token = await sessions.open_session(
            conn, store.table, store.user_id, key=KEY, ttl=-1, source_address="not an address", user_agent=""
        )
        assert not await session_repository.is_active(conn, store.table, session_id)
        with pytest.raises(InvalidToken, match="expired") as caught:
            await sessions.rotate_and_commit(conn, store.table, token, key=KEY)
        assert not isinstance(caught.value, RefreshReplayed)
        assert await session_repository.list_sessions(conn, store.table, store.user_id) == []
        (listed,) = await session_repository.list_sessions(conn, store.table, store.user_id, include_inactive=True)
        assert listed.id == session_id and not listed.active
    row = await _row(store, session_id)
    assert row["address"] is None and row["user_agent"] is None and row["revoked_at"] is None


async def test_revoke_revoke_all_and_list(store: Store) -> None:
    async with await connect(store.dsn) as conn:

        async def open_for(user_id: uuid.UUID | int) -> uuid.UUID:
            session_id, _ = await sessions.open_session(
                conn, store.table, user_id, key=KEY, ttl=600, source_address="2001:db8::1", user_agent="ua"
            )
            return session_id

        s1, s2, s3 = [await open_for(store.user_id) for _ in range(3)]
        theirs = await open_for(store.other_user_id)

        listed = await session_repository.list_sessions(conn, store.table, store.user_id)
        assert {s.id for s in listed} == {s1, s2, s3} and all(s.active for s in listed)
        assert listed[0].source_address == "2001:db8::1" and listed[0].user_agent == "ua"

        assert not await session_repository.revoke(conn, store.table, s1, user_id=store.other_user_id), "not theirs"
        assert await session_repository.revoke(conn, store.table, s1)
        assert not await session_repository.revoke(conn, store.table, s1), "already revoked"
        assert not await session_repository.revoke(conn, store.table, uuid.uuid4())
        assert not await session_repository.is_active(conn, store.table, s1)

        assert await session_repository.revoke_all(conn, store.table, store.user_id, except_session=s3) == 1
        assert [s.id for s in await session_repository.list_sessions(conn, store.table, store.user_id)] == [s3]
        assert await session_repository.revoke_all(conn, store.table, store.user_id) == 1
        assert await session_repository.revoke_all(conn, store.table, store.user_id) == 0
        assert await session_repository.list_sessions(conn, store.table, store.user_id) == []
        assert len(await session_repository.list_sessions(conn, store.table, store.user_id, include_inactive=True)) == 3
        assert await session_repository.is_active(conn, store.table, theirs), "other users keep their sessions"

        assert await session_repository.delete_expired(conn, store.table, keep_for=3600) == 0
        assert await session_repository.delete_expired(conn, store.table) == 3
        assert await session_repository.is_active(conn, store.table, theirs)


async def test_only_the_two_session_tables_are_accepted(control_dsn: str) -> None:
    async with await connect(control_dsn) as conn:
        with pytest.raises(AssertionError):
            await session_repository.is_active(conn, "users", uuid.uuid4())  # type: ignore[arg-type]


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
