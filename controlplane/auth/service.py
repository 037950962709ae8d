"""Authentication: who a request is, for the tenant API and for the platform (``/admin/*``).

Tenant side, in two steps so that a bad token never costs a database connection:

1. ``credential(header)`` parses ``Authorization: Bearer ...`` in memory: a JWT is verified (signature,
   expiry, claims) or an API key is recognised by its shape; garbage is a 401 here.
2. ``tenant_principal(conn, tenant, credential)`` runs on the request's own connection to the tenant's
   database: a token of another tenant is a 403; the user and the login session are read in one
   query and cached (see ``Authenticator``): disabling a user, changing their role or logging out
   takes effect on every instance at once (``principals_changed`` and ``principal_events``), and
   within ``principal_cache_ttl`` on an instance that does not hear the notifications.

Login is throttled per account and per source address; passwords are argon2id. The account's throttle
key is the address exactly as the database looks the account up (its ``lower()``), so no spelling of
an address that reaches an account gets an allowance of its own.

Impersonation tokens carry the impersonating super-admin's login session (``sid``): they, and the API
keys made with them, stop as soon as that session ends or the admin is disabled (one control-database
read, cached for ``principal_cache_ttl``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import time
import uuid
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from controlplane.auth import principal_events
from controlplane.auth import repository as admins
from controlplane.auth import tenant_repository as users
from controlplane.auth.api_keys import (
    API_KEY_PREFIX,
    ApiKeyCredential,
    ApiKeyMaker,
    api_key_maker,
    hash_secret,
    key_principal,
    new_api_key,
)
from controlplane.auth.logins import PLATFORM_AUDIENCE, TENANT_AUDIENCE, Logins, TokenPair
from controlplane.auth.models import (
    ROLE_PERMISSIONS,
    Principal,
    PrincipalKind,
    Role,
    TenantRef,
    effective_permissions,
)
from controlplane.auth.passwords import Passwords
from controlplane.auth.ratelimit import RateLimiter
from controlplane.auth.tokens import AccessClaims, TokenSigner
from controlplane.db import AsyncConn
from controlplane.errors import (
    FeatureNotInTier,
    InvalidToken,
    Unauthorized,
    WrongTenant,
)
from controlplane.registry.models import Tier
from controlplane.settings import AuthSettings

log = logging.getLogger(__name__)

#: Tiers whose tenants may use API keys ("API access").
API_KEY_TIERS = frozenset({Tier.ENTERPRISE})

__all__ = [
    "API_KEY_PREFIX",
    "API_KEY_TIERS",
    "PLATFORM_AUDIENCE",
    "TENANT_AUDIENCE",
    "ApiKeyCredential",
    "ApiKeyMaker",
    "Authenticator",
    "Credential",
    "TokenPair",
    "api_key_maker",
    "automation_token_matches",
    "bearer",
    "expiry",
    "hash_secret",
    "new_api_key",
    "subject_id",
]


Credential = AccessClaims | ApiKeyCredential


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; 401 when there is none."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("authentication required: send Authorization: Bearer <access token or API key>")
    return token


class Authenticator(Logins):
    """Issues and checks credentials. One per service instance.

    Two small caches keep a hot caller's requests cheap (each was a third of a routed request's CPU):
    verified tokens (by their exact text, until they expire) and principals (by tenant and session or
    key). A change to a tenant's accounts (``principals_changed``, after its commit) drops that
    tenant's principals here at once and, through ``principal_events``, on every other instance.
    Principals are reused for ``principal_cache_max`` seconds while those notifications are heard
    (``forget_all_principals(notified=True)``), otherwise for ``principal_cache_ttl``; never beyond the
    session's or key's expiry, and at most ``principal_cache_ttl`` when an impersonation made the key.
    A principal read while its tenant's were dropped is not cached (it may predate the change).
    """

    #: Entries kept at most in each cache (beyond that the cache starts over).
    CACHE_LIMIT = 10_000

    def __init__(
        self,
        settings: AuthSettings,
        signer: TokenSigner,
        passwords: Passwords,
        limiter: RateLimiter,
        *,
        refresh_key: bytes | None = None,
        control: AsyncConnectionPool[AsyncConn] | None = None,
    ):
        """``refresh_key``: ``sessions.refresh_key(CARDVAULT_SECRET_KEY)``, the same on every instance (a
        random one is only good for a single process that never sees a session twice). ``control``: the
        control database, to check the admin session behind impersonations (without it, impersonation
        tokens and keys made with them are refused)."""
        self.settings = settings
        self.signer = signer
        self.passwords = passwords
        self.limiter = limiter
        self._refresh_key = refresh_key if refresh_key is not None else secrets.token_bytes(32)
        self._control = control
        self._verified: dict[str, AccessClaims] = {}
        self._principals: dict[uuid.UUID, dict[object, tuple[Principal, float]]] = {}
        self._principal_count = 0
        self._admin_sessions: dict[tuple[uuid.UUID, uuid.UUID], tuple[bool, float]] = {}
        self._notified = False  # principal change notifications are being heard (see principal_events)
        self._drops: dict[uuid.UUID, int] = {}  # per tenant: how often its principals were dropped
        self._epoch = 0  # how often every principal was dropped

    def forget_principals(self, tenant_id: uuid.UUID) -> None:
        """Drop the cached principals of a tenant (its users, sessions or keys changed)."""
        self._principal_count -= len(self._principals.pop(tenant_id, {}))
        if len(self._drops) >= self.CACHE_LIMIT:
            self._drops.clear()
            self._epoch += 1
        self._drops[tenant_id] = self._drops.get(tenant_id, 0) + 1

    def forget_all_principals(self, *, notified: bool) -> None:
        """Drop every cached principal; ``notified``: whether change notifications are heard from now on."""
        self._principals.clear()
        self._principal_count = 0
        self._epoch += 1
        self._notified = notified

    async def principals_changed(self, tenant_id: uuid.UUID) -> None:
        """A tenant's users, sessions or keys changed (call after the commit): drop its principals here and
        on every other instance."""
        self.forget_principals(tenant_id)
        if self._control is None:
            return
        try:
            async with self._control.connection() as conn:
                await principal_events.publish(conn, tenant_id)
        except psycopg.Error as exc:  # the change is made; other instances see it within the cache's bound
            log.warning("could not tell other instances that tenant %s's principals changed: %s", tenant_id, exc)

    def forget_admin_sessions(self) -> None:
        """Drop the cached state of admin sessions (an admin logged out or was disabled here), and every
        cached principal with it (keys made during an impersonation depend on an admin session)."""
        self._admin_sessions.clear()
        self.forget_all_principals(notified=self._notified)

    async def admin_session_live(self, admin_id: uuid.UUID, session_id: uuid.UUID) -> bool:
        """Whether the super-admin's login session is live and the admin enabled (cached for the principal TTL)."""
        key = (admin_id, session_id)
        cached = self._admin_sessions.get(key)
        if cached is not None and cached[1] >= time.monotonic():
            return cached[0]
        if self._control is None:
            return False
        async with self._control.connection() as conn:
            live = await admins.admin_session_live(conn, admin_id, session_id)
        ttl = self.settings.principal_cache_ttl
        if ttl > 0:
            if len(self._admin_sessions) >= self.CACHE_LIMIT:
                self._admin_sessions.clear()
            self._admin_sessions[key] = (live, time.monotonic() + ttl)
        return live

    def _cached_principal(self, tenant_id: uuid.UUID, key: object) -> Principal | None:
        entry = self._principals.get(tenant_id, {}).get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def _drop_count(self, tenant_id: uuid.UUID) -> tuple[int, int]:
        """Taken before reading a principal: ``_remember`` keeps it only if nothing was dropped meanwhile."""
        return self._epoch, self._drops.get(tenant_id, 0)

    def _remember(
        self,
        tenant_id: uuid.UUID,
        key: object,
        principal: Principal,
        seen: tuple[int, int],
        *,
        expires_at: dt.datetime | None,
        short: bool = False,
    ) -> Principal:
        ttl = self.settings.principal_cache_ttl
        if ttl > 0 and self._notified and not short:  # (a TTL of 0 means: read on every request)
            ttl = max(ttl, self.settings.principal_cache_max)
        if expires_at is not None:
            ttl = min(ttl, (expires_at - dt.datetime.now(dt.UTC)).total_seconds())
        if ttl > 0 and self._drop_count(tenant_id) == seen:
            if self._principal_count >= self.CACHE_LIMIT:
                self._principals.clear()
                self._principal_count = 0
            entries = self._principals.setdefault(tenant_id, {})
            self._principal_count += key not in entries
            entries[key] = (principal, time.monotonic() + ttl)
        return principal

    # -- tenant requests ------------------------------------------------------------------------

    async def credential(self, header: str | None) -> Credential:
        token = bearer(header)
        if token.startswith(API_KEY_PREFIX):
            tenant_hex, sep, secret = token[len(API_KEY_PREFIX) :].partition("_")
            if not sep or len(tenant_hex) != 32 or not secret:
                raise InvalidToken("malformed API key")
            return ApiKeyCredential(tenant_hex=tenant_hex, digest=hash_secret(token))
        claims = self._verified.get(token)
        if claims is not None and claims.exp > time.time():
            return claims
        claims = await self.signer.verify(token)
        if len(self._verified) >= self.CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    @staticmethod
    def check_tenant(tenant: TenantRef, credential: Credential) -> None:
        """403 unless the credential was issued for ``tenant`` (before anything touches its database)."""
        if isinstance(credential, ApiKeyCredential):
            if credential.tenant_hex != tenant.id.hex:
                raise WrongTenant("this API key belongs to another tenant")
            if tenant.tier not in API_KEY_TIERS:
                raise FeatureNotInTier(
                    f"API access is not part of the {tenant.tier.value} tier", tier=tenant.tier.value
                )
            return
        if credential.aud != TENANT_AUDIENCE:
            raise WrongTenant("a platform token cannot act inside a tenant; use impersonation")
        if credential.tid != tenant.id:
            raise WrongTenant("this token belongs to another tenant")

    async def tenant_principal(self, conn: AsyncConn, tenant: TenantRef, credential: Credential) -> Principal:
        """Who the (tenant-checked) credential is, as the tenant's database says now."""
        if isinstance(credential, ApiKeyCredential):
            return await self._api_key_principal(conn, tenant, credential)
        if credential.imp is not None:
            return await self._impersonation_principal(tenant, credential)
        # Cached by the session id as the token says it (the token is signed): no parsing on a hit.
        cached = self._cached_principal(tenant.id, credential.sid) if credential.sid else None
        if cached is not None:
            return cached
        user_id, session_id = _tenant_subject(credential)
        seen = self._drop_count(tenant.id)
        row = await users.session_user(conn, user_id, session_id)
        if row is None or not row["live"]:
            raise InvalidToken("the session has ended; log in again")
        if row["disabled"]:
            raise InvalidToken("this account is disabled")
        role = Role(row["tenant_role"])
        principal = Principal(
            kind=PrincipalKind.USER,
            subject=f"user:{row['id']}",
            label=row["email"],
            role=role,
            permissions=effective_permissions(role, row["permissions"]),
            tenant_id=tenant.id,
            user_id=row["id"],
            session_id=session_id,
        )
        return self._remember(tenant.id, credential.sid, principal, seen, expires_at=row["expires_at"])

    async def _impersonation_principal(self, tenant: TenantRef, claims: AccessClaims) -> Principal:
        """A super-admin inside the tenant, for as long as the admin's login session lasts."""
        try:
            admin_id = uuid.UUID(claims.imp or "")
            admin_session = uuid.UUID(claims.sid or "")
        except ValueError:
            raise InvalidToken("this impersonation token is not tied to a login session") from None
        if not await self.admin_session_live(admin_id, admin_session):
            raise InvalidToken("the impersonating admin's session has ended or the admin is disabled")
        role = Role(claims.role)
        return Principal(
            kind=PrincipalKind.IMPERSONATION,
            subject=claims.sub,
            label=f"impersonation by {claims.sub}",
            role=role,
            permissions=ROLE_PERMISSIONS[role],
            tenant_id=tenant.id,
            impersonator=admin_id,
            impersonator_session=admin_session,
            expires_at=dt.datetime.fromtimestamp(claims.exp, dt.UTC),
        )

    async def _api_key_principal(self, conn: AsyncConn, tenant: TenantRef, key: ApiKeyCredential) -> Principal:
        cached = self._cached_principal(tenant.id, key.digest)
        if cached is not None:
            return cached
        seen = self._drop_count(tenant.id)
        row = await users.api_key_by_hash(conn, key.digest)
        if row is None:
            raise InvalidToken("unknown, expired or revoked API key")
        admin_live = False
        if row["live"] and row["created_by"] is None and row["admin_session"] is not None:
            admin_live = await self.admin_session_live(row["created_by_admin"], row["admin_session"])
        principal = key_principal(tenant.id, row, admin_live=admin_live)
        await users.touch_api_key(conn, row["id"])
        # A key an impersonation made answers to an admin session, whose end other instances are not told of.
        made_by_admin = row["created_by"] is None
        return self._remember(tenant.id, key.digest, principal, seen, expires_at=row["expires_at"], short=made_by_admin)


def _tenant_subject(claims: AccessClaims) -> tuple[int, uuid.UUID]:
    kind, _, raw_id = claims.sub.partition(":")
    try:
        if kind != "user" or claims.sid is None:
            raise ValueError
        return int(raw_id), uuid.UUID(claims.sid)
    except ValueError:
        raise InvalidToken("the token's subject is not a tenant user session") from None


def automation_token_matches(presented: str, expected_sha256: bytes | None) -> bool:
    """Constant-time check of the CARDVAULT_ADMIN_TOKEN (only its hash is kept)."""
    if expected_sha256 is None:
        return False
    return hmac.compare_digest(hash_secret(presented), expected_sha256)


def expiry(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def subject_id(claims: AccessClaims, kind: str) -> Any:
    """The id part of ``sub`` (``admin:<uuid>`` -> UUID); 401 for another kind."""
    got, _, raw = claims.sub.partition(":")
    try:
        if got != kind:
            raise ValueError
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidToken(f"the token's subject is not a {kind}") from None
