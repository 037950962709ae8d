"""Authentication: who a request is, for the tenant API and for the platform (``/admin/*``).

Tenant side, in two steps so that a bad token never costs a database connection:

1. ``credential(header)`` parses ``Authorization: Bearer ...`` in memory: a JWT is verified (signature,
   expiry, claims) or an API key is recognised by its shape; garbage is a 401 here.
2. ``tenant_principal(conn, tenant, credential)`` runs on the request's own connection to the tenant's
   database: a token of another tenant is a 403; the user and the login session are read in one
   query (cached for ``principal_cache_ttl``), so disabling a user, changing their role or logging
   out takes effect on this instance at once and on every other within that TTL.

Login is throttled per account and per source address; passwords are argon2id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from controlplane.auth import repository as admins
from controlplane.auth import sessions
from controlplane.auth import tenant_repository as users
from controlplane.auth.models import (
    ROLE_PERMISSIONS,
    Principal,
    PrincipalKind,
    Role,
    effective_permissions,
)
from controlplane.auth.passwords import Passwords
from controlplane.auth.ratelimit import RateLimiter
from controlplane.auth.tokens import AccessClaims, TokenSigner
from controlplane.db import AsyncConn
from controlplane.errors import (
    FeatureNotInTier,
    InvalidCredentials,
    InvalidToken,
    TooManyRequests,
    Unauthorized,
    WrongTenant,
)
from controlplane.registry.models import Tier
from controlplane.routing.models import TenantContext
from controlplane.settings import AuthSettings

#: ``aud`` of tokens for the platform API and for one tenant's API.
PLATFORM_AUDIENCE = "platform"
TENANT_AUDIENCE = "tenant"
#: API keys: ``cvk_<tenant id hex>_<secret>``. The tenant id lets a key presented to the wrong tenant
#: be told apart (403) from one that does not exist (401) without asking the other tenant's database.
API_KEY_PREFIX = "cvk_"
#: Tiers whose tenants may use API keys ("API access").
API_KEY_TIERS = frozenset({Tier.ENTERPRISE})


class TokenPair(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str | None = None
    refresh_expires_in: int | None = None


@dataclass(frozen=True)
class ApiKeyCredential:
    tenant_hex: str
    digest: bytes


Credential = AccessClaims | ApiKeyCredential


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; 401 when there is none."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("authentication required: send Authorization: Bearer <access token or API key>")
    return token


def new_api_key(tenant_id: uuid.UUID) -> tuple[str, str, bytes]:
    """(the key to show once, its display prefix, its hash to store)."""
    secret = secrets.token_urlsafe(32)
    key = f"{API_KEY_PREFIX}{tenant_id.hex}_{secret}"
    return key, key[: len(API_KEY_PREFIX) + 32 + 7], hash_secret(key)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Authenticator:
    """Issues and checks credentials. One per service instance.

    Two small caches keep a hot caller's requests cheap (each was a third of a routed request's CPU):
    verified tokens (by their exact text, until they expire) and principals (by tenant and session or
    key, for ``principal_cache_ttl`` seconds). A change to a tenant's accounts made through this
    instance drops that tenant's principals at once (``forget_principals``); other instances see it
    within the TTL.
    """

    #: Entries kept at most in each cache (beyond that the cache starts over).
    CACHE_LIMIT = 10_000

    def __init__(self, settings: AuthSettings, signer: TokenSigner, passwords: Passwords, limiter: RateLimiter):
        self.settings = settings
        self.signer = signer
        self.passwords = passwords
        self.limiter = limiter
        self._verified: dict[str, AccessClaims] = {}
        self._principals: dict[uuid.UUID, dict[object, tuple[Principal, float]]] = {}
        self._principal_count = 0

    def forget_principals(self, tenant_id: uuid.UUID) -> None:
        """Drop the cached principals of a tenant (its users, sessions or keys changed)."""
        self._principal_count -= len(self._principals.pop(tenant_id, {}))

    def _cached_principal(self, tenant_id: uuid.UUID, key: object) -> Principal | None:
        entry = self._principals.get(tenant_id, {}).get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def _remember(self, tenant_id: uuid.UUID, key: object, principal: Principal) -> Principal:
        ttl = self.settings.principal_cache_ttl
        if ttl > 0:
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
    def check_tenant(tenant: TenantContext, credential: Credential) -> None:
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
        if credential.tid != str(tenant.id):
            raise WrongTenant("this token belongs to another tenant")

    async def tenant_principal(self, conn: AsyncConn, tenant: TenantContext, credential: Credential) -> Principal:
        """Who the (tenant-checked) credential is, as the tenant's database says now."""
        if isinstance(credential, ApiKeyCredential):
            return await self._api_key_principal(conn, tenant, credential)
        if credential.imp is not None:
            role = Role(credential.role)
            return Principal(
                kind=PrincipalKind.IMPERSONATION,
                subject=credential.sub,
                label=f"impersonation by {credential.sub}",
                role=role,
                permissions=ROLE_PERMISSIONS[role],
                tenant_id=tenant.id,
                impersonator=uuid.UUID(credential.imp),
            )
        user_id, session_id = _tenant_subject(credential)
        cached = self._cached_principal(tenant.id, session_id)
        if cached is not None:
            return cached
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
        return self._remember(tenant.id, session_id, principal)

    async def _api_key_principal(self, conn: AsyncConn, tenant: TenantContext, key: ApiKeyCredential) -> Principal:
        cached = self._cached_principal(tenant.id, key.digest)
        if cached is not None:
            return cached
        row = await users.api_key_by_hash(conn, key.digest)
        if row is None or not row["live"] or row["maker_disabled"]:
            raise InvalidToken("unknown, expired or revoked API key")
        await users.touch_api_key(conn, row["id"])
        role = Role(row["tenant_role"])
        # A key never has more than its role, nor more than its maker has now (grants are not inherited).
        permissions = ROLE_PERMISSIONS[role]
        if row["permissions"] is not None:
            maker = effective_permissions(role, row["permissions"])
            permissions = permissions & maker
        principal = Principal(
            kind=PrincipalKind.API_KEY,
            subject=f"api_key:{row['id']}",
            label=row["name"],
            role=role,
            permissions=permissions,
            tenant_id=tenant.id,
            user_id=row["created_by"],
        )
        return self._remember(tenant.id, key.digest, principal)

    # -- tenant logins --------------------------------------------------------------------------

    async def _throttle(self, account: str, address: str | None) -> list[tuple[str, int]]:
        """The throttle keys of this attempt; 429 if either is over its failure budget."""
        window = int(self.settings.login_window)
        keys = [(f"login:account:{account}", self.settings.login_max_failures)]
        if address:
            keys.append((f"login:address:{address}", self.settings.login_max_failures_per_address))
        for key, limit in keys:
            decision = await self.limiter.check(key, limit, window)
            if not decision.allowed:
                raise TooManyRequests(
                    "too many failed logins; try again later",
                    headers={"Retry-After": str(decision.reset_after)},
                    retry_after=decision.reset_after,
                )
        return keys

    async def _failed(self, keys: list[tuple[str, int]]) -> InvalidCredentials:
        for key, _limit in keys:
            await self.limiter.fail(key, int(self.settings.login_window))
        return InvalidCredentials("wrong email or password")

    async def login_tenant(
        self,
        conn: AsyncConn,
        tenant: TenantContext,
        email: str,
        password: str,
        *,
        source_address: str | None,
        user_agent: str | None,
    ) -> tuple[TokenPair, int]:
        """Tokens for a tenant user, and the user's id; the caller commits."""
        keys = await self._throttle(f"{tenant.id}:{email.strip().lower()}", source_address)
        row = await users.credentials_by_email(conn, email.strip())
        if row is None:
            await self.passwords.verify_dummy(password)
            raise await self._failed(keys)
        if not await self.passwords.verify(row["password_hash"], password) or row["disabled"]:
            raise await self._failed(keys)
        await self.limiter.clear(keys[0][0], int(self.settings.login_window))
        if self.passwords.needs_rehash(row["password_hash"]):
            await users.update_user(conn, row["id"], {"password_hash": await self.passwords.hash(password)})
        await users.touch_login(conn, row["id"])
        session_id, refresh = await sessions.open_session(
            conn,
            "auth_sessions",
            row["id"],
            ttl=self.settings.refresh_token_ttl,
            source_address=source_address,
            user_agent=user_agent,
        )
        return self._tenant_pair(tenant, row["id"], Role(row["tenant_role"]), session_id, refresh), row["id"]

    def _tenant_pair(
        self, tenant: TenantContext, user_id: int, role: Role, session_id: uuid.UUID, refresh: str
    ) -> TokenPair:
        return self._session_pair(TENANT_AUDIENCE, f"user:{user_id}", role, session_id, refresh, tenant.id)

    def _session_pair(
        self,
        audience: str,
        subject: str,
        role: Role,
        session_id: uuid.UUID,
        refresh: str,
        tenant_id: uuid.UUID | None = None,
    ) -> TokenPair:
        ttl = self.settings.access_token_ttl
        access = self.signer.issue(
            audience=audience, subject=subject, role=role.value, ttl=ttl, tenant_id=tenant_id, session_id=session_id
        )
        return TokenPair(
            access_token=access,
            token_type="Bearer",
            expires_in=int(ttl),
            refresh_token=refresh,
            refresh_expires_in=int(self.settings.refresh_token_ttl),
        )

    async def refresh_tenant(self, conn: AsyncConn, tenant: TenantContext, refresh_token: str) -> TokenPair:
        """New tokens for a live session (the old refresh token is spent). Replaying a spent one
        raises ``RefreshReplayed`` after revoking the session: the caller must commit on it."""
        session, new_refresh = await sessions.rotate(conn, "auth_sessions", refresh_token)
        user = await users.get_user(conn, session.user_id)
        if user is None or user["disabled"]:
            await sessions.revoke(conn, "auth_sessions", session.id)
            raise InvalidToken("this account is disabled")
        return self._tenant_pair(tenant, user["id"], Role(user["tenant_role"]), session.id, new_refresh)

    def impersonation_token(self, tenant: TenantContext, admin_id: uuid.UUID, role: Role) -> TokenPair:
        ttl = self.settings.impersonation_ttl
        access = self.signer.issue(
            audience=TENANT_AUDIENCE,
            subject=f"admin:{admin_id}",
            role=role.value,
            ttl=ttl,
            tenant_id=tenant.id,
            impersonator=admin_id,
        )
        return TokenPair(access_token=access, token_type="Bearer", expires_in=int(ttl))

    # -- platform logins ------------------------------------------------------------------------

    def _platform_pair(self, admin_id: uuid.UUID, session_id: uuid.UUID, refresh: str) -> TokenPair:
        return self._session_pair(PLATFORM_AUDIENCE, f"admin:{admin_id}", Role.SUPER_ADMIN, session_id, refresh)

    async def login_platform(
        self, conn: AsyncConn, email: str, password: str, *, source_address: str | None, user_agent: str | None
    ) -> TokenPair:
        """Tokens for a super-admin (``conn``: an autocommit control-database connection)."""
        keys = await self._throttle(f"platform:{email.strip().lower()}", source_address)
        found = await admins.get_admin_credentials(conn, email.strip())
        if found is None:
            await self.passwords.verify_dummy(password)
            raise await self._failed(keys)
        admin, password_hash = found
        if not await self.passwords.verify(password_hash, password) or admin.disabled:
            raise await self._failed(keys)
        await self.limiter.clear(keys[0][0], int(self.settings.login_window))
        async with conn.transaction():
            if self.passwords.needs_rehash(password_hash):
                await admins.set_admin_password(conn, admin.id, await self.passwords.hash(password))
            await admins.touch_login(conn, admin.id)
            session_id, refresh = await sessions.open_session(
                conn,
                "platform_sessions",
                admin.id,
                ttl=self.settings.refresh_token_ttl,
                source_address=source_address,
                user_agent=user_agent,
            )
        return self._platform_pair(admin.id, session_id, refresh)

    async def refresh_platform(self, conn: AsyncConn, refresh_token: str) -> TokenPair:
        """Like ``refresh_tenant``, in the control database: the caller commits, on ``InvalidToken`` too."""
        session, new_refresh = await sessions.rotate(conn, "platform_sessions", refresh_token)
        admin = await admins.get_admin(conn, session.user_id)
        if admin is None or admin.disabled:
            await sessions.revoke(conn, "platform_sessions", session.id)
            raise InvalidToken("this account is disabled")
        return self._platform_pair(admin.id, session.id, new_refresh)


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
