"""Login sessions on real PostgreSQL, in both tables (``platform_sessions`` in the control database,
``auth_sessions`` in a tenant's): opening, refresh rotation with its grace window, replay detection,
forged and legacy secrets, expiry and revocation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from controlplane.auth import repository as admins_repo
from controlplane.auth import session_repository, sessions
from controlplane.auth.session_repository import SessionTable
from controlplane.auth.sessions import RefreshReplayed
from controlplane.db import AsyncConn
from controlplane.errors import InvalidToken
from controlplane.schemas.alembic_runner import tenant_scripts
from controlplane.settings import ProvisioningSettings
from tests.conftest import SECRET_KEY
from tests.integration.tenant_support import create_database, drop_database

KEY = sessions.refresh_key(SECRET_KEY)


async def connect(dsn: str) -> AsyncConn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)


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
