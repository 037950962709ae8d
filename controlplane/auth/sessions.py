"""Login sessions with rotating refresh tokens, for ``platform_sessions`` and ``auth_sessions``.

Both tables have the same shape (``platform_sessions`` in the control database for super-admins,
``auth_sessions`` in each tenant database for its users). A refresh token is
``"{session_id}.{generation}.{mac}"``: every refresh moves the session to the next generation, and the
secret of generation ``g`` is ``HMAC(refresh key, session seed || g)``. The refresh key is derived from
``CARDVAULT_SECRET_KEY`` (:func:`refresh_key`); the table keeps the random per-session seed, the
generation, and SHA-256 of the current and of the previous secret, never a secret itself (the seed
is useless without the key).

Why derived secrets rather than random ones: the server can tell, in constant time and constant
space, whether a presented secret is one it really issued for this session earlier, and it can
hand out the same successor twice. So a refresh is one of:

- the current secret: rotate to the next generation;
- the secret rotated away last, within ``grace`` seconds of that rotation: the same successor again
  (two concurrent refreshes, or a retry after a lost response, both end with the same token);
- any other secret issued for this session (an older generation, or the previous one after the grace):
  the token was copied, the session is revoked (OAuth 2.0 Security BCP, refresh token rotation);
- anything else: a plain ``InvalidToken``, and the session is untouched. The session id is no secret
  (it is the ``sid`` of every access token), so a made-up secret must not be able to end a session.

Sessions opened before derived secrets (``refresh_seed`` NULL) hold a random secret; their first
refresh moves them to derived secrets, and the legacy secret is recognised through ``previous_hash``.

Callers own the transaction, with one rule for :func:`rotate`: on ``RefreshReplayed`` the revocation it
wrote must be committed before the error is reported (or use :func:`rotate_and_commit`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from typing import Any, Generic, Literal, TypeVar, overload

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controlplane.auth import session_repository as repository
from controlplane.auth.session_repository import SessionTable, UserId
from controlplane.db import AsyncConn
from controlplane.errors import InvalidToken

U = TypeVar("U", uuid.UUID, int)

_SEED_BYTES = 32
_MAX_GENERATION = 2**31 - 1  # the column is an integer; a session refreshed every second lasts 68 years


class SessionRow(msgspec.Struct, Generic[U], frozen=True, kw_only=True):
    """A session that was just refreshed (``SessionRow[uuid.UUID]`` for admins, ``[int]`` for users)."""

    id: uuid.UUID
    user_id: U
    expires_at: dt.datetime


class RefreshReplayed(InvalidToken):
    """A refresh token issued earlier for the session (already rotated) was presented; the session has
    been revoked.

    The revocation was written on the caller's connection: commit it, then report the error.
    """

    def __init__(self, detail: str, *, session_id: uuid.UUID, user_id: UserId) -> None:
        super().__init__(detail)
        self.session_id = session_id
        self.user_id = user_id


def refresh_key(secret_key: str) -> bytes:
    """The key refresh-token secrets are derived with, from ``CARDVAULT_SECRET_KEY`` (same on every instance)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cardvault-refresh", info=b"refresh-tokens-v1")
    return hkdf.derive(secret_key.encode())


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _mac(key: bytes, seed: bytes, generation: int) -> str:
    digest = hmac.digest(key, b"cardvault-refresh\x00" + seed + generation.to_bytes(8, "big"), "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _secret(key: bytes, seed: bytes, generation: int) -> str:
    """The refresh secret of ``generation`` of the session with ``seed``."""
    return f"{generation}.{_mac(key, seed, generation)}"


def _issued_before(key: bytes, seed: bytes | None, generation: int, secret: str) -> bool:
    """Whether ``secret`` is the derived secret of a generation before ``generation`` (constant time)."""
    raw, sep, mac = secret.partition(".")
    if seed is None or not sep or not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        return False
    issued = int(raw)
    return issued < generation and hmac.compare_digest(mac.encode(), _mac(key, seed, issued).encode())


def _inet(address: str | None) -> str | None:
    """``address`` if an ``inet`` column can hold it, else None (a session is never refused for it)."""
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def parse_refresh_token(token: str) -> tuple[uuid.UUID, str]:
    """``(session_id, secret)`` of a refresh token; malformed ones raise ``InvalidToken``."""
    head, sep, secret = token.partition(".")
    if not sep or not secret or len(token) > 200:
        raise InvalidToken("malformed refresh token")
    try:
        return uuid.UUID(head), secret
    except ValueError:
        raise InvalidToken("malformed refresh token") from None


async def open_session(
    conn: AsyncConn,
    table: SessionTable,
    user_id: UserId,
    *,
    key: bytes,
    ttl: float,
    source_address: str | None,
    user_agent: str | None,
) -> tuple[uuid.UUID, str]:
    """A new session of ``ttl`` seconds; returns its id and its first refresh token (generation 0)."""
    session_id = uuid.uuid4()
    seed = secrets.token_bytes(_SEED_BYTES)
    secret = _secret(key, seed, 0)
    agent = user_agent[:512] if user_agent else None
    await repository.insert_session(
        conn,
        table,
        session_id=session_id,
        user_id=user_id,
        refresh_hash=_hash(secret),
        refresh_seed=seed,
        ttl=ttl,
        source_address=_inet(source_address),
        user_agent=agent,
    )
    return session_id, f"{session_id}.{secret}"


@overload
async def rotate(
    conn: AsyncConn, table: Literal["platform_sessions"], refresh_token: str, *, key: bytes, grace: float = 0.0
) -> tuple[SessionRow[uuid.UUID], str]: ...
@overload
async def rotate(
    conn: AsyncConn, table: Literal["auth_sessions"], refresh_token: str, *, key: bytes, grace: float = 0.0
) -> tuple[SessionRow[int], str]: ...
async def rotate(
    conn: AsyncConn, table: SessionTable, refresh_token: str, *, key: bytes, grace: float = 0.0
) -> tuple[SessionRow[Any], str]:
    """Exchange a refresh token for the session's next one (see the module docstring).

    Unknown, revoked or expired sessions, malformed tokens and secrets never issued for the session
    raise ``InvalidToken`` and change nothing. The secret rotated away last, presented again within
    ``grace`` seconds of that rotation, gets the same successor. Any other secret issued earlier
    revokes the session and raises ``RefreshReplayed``: the caller's transaction must commit on that
    exception. Run it inside a transaction (it locks the row, so concurrent refreshes take turns).
    """
    session_id, secret = parse_refresh_token(refresh_token)
    row = await repository.lock_for_refresh(conn, table, session_id, grace=grace)
    if row is None or row["revoked"]:
        raise InvalidToken("session not found or revoked")
    if row["expired"]:
        raise InvalidToken("session expired")
    session: SessionRow[Any] = SessionRow(id=row["id"], user_id=row["user_id"], expires_at=row["expires_at"])
    presented = _hash(secret)
    seed: bytes | None = None if row["refresh_seed"] is None else bytes(row["refresh_seed"])
    generation: int = row["generation"]
    previous = row["previous_hash"] is not None and hmac.compare_digest(bytes(row["previous_hash"]), presented)

    if hmac.compare_digest(bytes(row["refresh_hash"]), presented):
        if generation >= _MAX_GENERATION:
            raise InvalidToken("this session was refreshed too often; log in again")
        seed = seed or secrets.token_bytes(_SEED_BYTES)  # a legacy session moves to derived secrets
        new_secret = _secret(key, seed, generation + 1)
        await repository.set_refresh(
            conn,
            table,
            session_id,
            refresh_hash=_hash(new_secret),
            refresh_seed=seed,
            generation=generation + 1,
            previous_hash=presented,
        )
        return session, f"{session_id}.{new_secret}"

    if previous and row["in_grace"] and seed is not None:
        successor = _secret(key, seed, generation)
        # Only if this key really made the current secret (a changed CARDVAULT_SECRET_KEY cannot).
        if hmac.compare_digest(_hash(successor), bytes(row["refresh_hash"])):
            await repository.touch(conn, table, session_id)
            return session, f"{session_id}.{successor}"
        raise InvalidToken("refresh token was just used; use the token it was exchanged for")

    if previous or _issued_before(key, seed, generation, secret):
        await repository.revoke(conn, table, session_id)
        raise RefreshReplayed(
            "refresh token was already used; the session has been revoked",
            session_id=session_id,
            user_id=row["user_id"],
        )
    raise InvalidToken("invalid refresh token")


@overload
async def rotate_and_commit(
    conn: AsyncConn, table: Literal["platform_sessions"], refresh_token: str, *, key: bytes, grace: float = 0.0
) -> tuple[SessionRow[uuid.UUID], str]: ...
@overload
async def rotate_and_commit(
    conn: AsyncConn, table: Literal["auth_sessions"], refresh_token: str, *, key: bytes, grace: float = 0.0
) -> tuple[SessionRow[int], str]: ...
async def rotate_and_commit(
    conn: AsyncConn, table: SessionTable, refresh_token: str, *, key: bytes, grace: float = 0.0
) -> tuple[SessionRow[Any], str]:
    """:func:`rotate` in its own transaction, committing a replay's revocation before raising.

    For an autocommit connection that is not in a transaction (e.g. from a pool).
    """
    replayed: RefreshReplayed | None = None
    async with conn.transaction():
        try:
            return await rotate(conn, table, refresh_token, key=key, grace=grace)
        except RefreshReplayed as exc:
            replayed = exc
    assert replayed is not None
    raise replayed
