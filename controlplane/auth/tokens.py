"""Access tokens: HS256 JWTs signed with rotating keys from ``signing_keys``.

Every token names its key in the header (``kid``). The newest active key signs; a rotation retires the
previous key but keeps it verifying until ``verify_until`` (at least one access-token lifetime), so a
rotation logs nobody out. Key secrets are stored encrypted with ``CARDVAULT_SECRET_KEY`` and loaded
into a :class:`KeyRing` in memory; the app refreshes the ring periodically, and a token signed by a key
this instance has not seen yet (another instance rotated) triggers one rate-limited reload.

Verification is strict: HS256 only (``alg: none`` and every other algorithm are refused), issuer
``cardvault``, audience ``platform`` or ``tenant``, required claims of the right types, no leeway on
expiry. Every failure is an ``InvalidToken`` (401) with a short reason.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt
import msgspec

from controlplane.auth import repository
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import InvalidToken

log = logging.getLogger(__name__)

ISSUER = "cardvault"
AUDIENCE_PLATFORM = "platform"
AUDIENCE_TENANT = "tenant"
AUDIENCES = (AUDIENCE_PLATFORM, AUDIENCE_TENANT)
ALGORITHM = "HS256"
#: Clock skew tolerated between instances for ``iat`` (expiry gets none).
IAT_SKEW = 5.0
#: An unknown ``kid`` reloads the ring at most this often per signer (seconds).
RELOAD_INTERVAL = 1.0

_SECRET_BYTES = 32
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "role", "iat", "exp", "jti"]


class AccessClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims of a verified access token."""

    iss: str
    #: ``platform`` (super-admin API) or ``tenant`` (a tenant's API).
    aud: str
    sub: str
    role: str
    iat: int
    exp: int
    jti: str
    #: Tenant id (tenant tokens); parsed once, as the verified token is cached: checked on every request.
    tid: uuid.UUID | None = None
    #: Login session id: a revoked session invalidates its access tokens at once.
    sid: str | None = None
    #: Impersonating super-admin's id (impersonation tokens).
    imp: str | None = None


async def _read(conn: AsyncConn, box: SecretBox) -> tuple[dict[str, bytes], str | None]:
    """The keys that still verify, and the kid of the newest active one (None when there is none)."""
    keys: dict[str, bytes] = {}
    current: str | None = None
    for row in await repository.verifying_keys(conn):
        keys[row["kid"]] = base64.urlsafe_b64decode(box.decrypt(row["secret_encrypted"]))
        if row["active"]:
            current = row["kid"]
    return keys, current


async def _insert_key(conn: AsyncConn, box: SecretBox) -> tuple[str, bytes]:
    kid = secrets.token_urlsafe(9)  # 12 characters
    secret = secrets.token_bytes(_SECRET_BYTES)
    await repository.insert_signing_key(conn, kid, box.encrypt(base64.urlsafe_b64encode(secret).decode()))
    return kid, secret


async def _read_or_create(conn: AsyncConn, box: SecretBox) -> tuple[dict[str, bytes], str]:
    keys, current = await _read(conn, box)
    if current is not None:
        return keys, current
    async with conn.transaction():
        await repository.lock_signing_keys(conn)
        keys, current = await _read(conn, box)  # another instance may have created one meanwhile
        if current is None:
            current, secret = await _insert_key(conn, box)
            keys[current] = secret
            log.info("created signing key %s", current)
    return keys, current


class KeyRing:
    """The signing keys in memory: ``{kid: secret}`` and the kid that signs new tokens."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"current key {current!r} is not in the ring")
        self._keys = dict(keys)
        self._current = current

    @classmethod
    async def load(cls, conn: AsyncConn, box: SecretBox) -> KeyRing:
        """The keys of ``signing_keys`` that still verify; creates the first key if none is active."""
        keys, current = await _read_or_create(conn, box)
        return cls(keys, current)

    async def refresh(self, conn: AsyncConn, box: SecretBox) -> None:
        """Reload in place (picks up rotations by other instances, drops expired keys)."""
        keys, current = await _read_or_create(conn, box)
        self._keys, self._current = keys, current  # one assignment: readers never see a mix

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def get(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def signing_key(self) -> tuple[str, bytes]:
        keys, current = self._keys, self._current
        return current, keys[current]


async def rotate(conn: AsyncConn, box: SecretBox, *, verify_for: float) -> str:
    """A new signing key; the previous active key(s) retire but verify for ``verify_for`` more seconds.

    Returns the new kid. Instances sign with the new key after their next ``refresh``; until then they
    sign with the retired one, so keep the refresh interval well below ``verify_for`` minus the token
    lifetime.
    """
    async with conn.transaction():
        await repository.lock_signing_keys(conn)
        await repository.retire_signing_keys(conn, verify_for=verify_for)
        kid, _ = await _insert_key(conn, box)
    log.info("rotated signing keys: %s now signs", kid)
    return kid


#: Refreshes the signer's ring in place (``await ring.refresh(conn, box)`` on a pooled connection).
Reloader = Callable[[], Awaitable[None]]


class TokenSigner:
    """Issues and verifies access tokens with a :class:`KeyRing`.

    ``reload`` (which must refresh ``ring`` in place) is called, at most once per ``reload_interval``
    seconds, when a token names a key the ring does not hold, so tokens signed after another
    instance's rotation verify at once.
    """

    def __init__(self, ring: KeyRing, reload: Reloader | None = None, *, reload_interval: float = RELOAD_INTERVAL):
        self.ring = ring
        self._reload = reload
        self._reload_interval = reload_interval
        self._reload_lock = asyncio.Lock()
        self._last_reload: float | None = None

    def issue(
        self,
        *,
        audience: str,
        subject: str,
        role: str,
        ttl: float,
        tenant_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
        impersonator: uuid.UUID | None = None,
    ) -> str:
        """A signed token valid for ``ttl`` seconds from now."""
        if audience not in AUDIENCES:
            raise ValueError(f"audience must be one of {AUDIENCES}, got {audience!r}")
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audience,
            "sub": subject,
            "role": str(role),
            "iat": now,
            "exp": now + int(ttl),
            "jti": secrets.token_urlsafe(16),
        }
        for claim, value in (("tid", tenant_id), ("sid", session_id), ("imp", impersonator)):
            if value is not None:
                payload[claim] = str(value)
        kid, key = self.ring.signing_key()
        return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": kid})

    async def verify(self, token: str) -> AccessClaims:
        """The claims of a valid token; anything else raises ``InvalidToken``."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("unsupported token algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token has no key id")
        key = self.ring.get(kid) or await self._reload_for(kid)
        if key is None:
            raise InvalidToken("unknown token signing key")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=list(AUDIENCES),
                issuer=ISSUER,
                leeway=0,
                options={"require": _REQUIRED_CLAIMS, "verify_iat": False, "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("invalid token signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("invalid token audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("invalid token issuer") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed token") from None
        try:
            claims = msgspec.convert(payload, AccessClaims)
        except msgspec.ValidationError as exc:
            raise InvalidToken(f"invalid token claims: {exc}") from None
        if claims.aud not in AUDIENCES or claims.iss != ISSUER or not claims.sub:
            raise InvalidToken("invalid token claims")
        if claims.iat > time.time() + IAT_SKEW:
            raise InvalidToken("token issued in the future")
        return claims

    async def _reload_for(self, kid: str) -> bytes | None:
        """Reload the ring once (rate-limited) looking for ``kid``; None when it is still unknown."""
        if self._reload is None:
            return None
        async with self._reload_lock:
            key = self.ring.get(kid)  # a concurrent verification may have reloaded meanwhile
            if key is not None:
                return key
            now = time.monotonic()
            if self._last_reload is not None and now - self._last_reload < self._reload_interval:
                return None
            self._last_reload = now
            try:
                await self._reload()
            except Exception:
                log.warning("reloading signing keys failed", exc_info=True)
                return None
            return self.ring.get(kid)
