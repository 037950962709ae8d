"""Logins, refreshes and impersonation tokens: the half of the :class:`~controlplane.auth.service.Authenticator`
that issues credentials (the other half checks them).

Logins are throttled per account and per source address, and only failures count. The account's key
is the address as the database itself looks the account up (``lower(email)`` computed by PostgreSQL,
from ``login_lookup`` / ``admin_login_lookup``), never a separate normalisation in Python: with a
UTF-8 ``LC_CTYPE``, PostgreSQL lowers ``vİctim@`` (U+0130) to ``victim@`` where Python makes it
``vi̇ctim@``, and a throttle keyed by Python's ``lower()`` gave every such spelling fresh guesses at
the same account.
"""

from __future__ import annotations

import uuid

import msgspec

from controlplane.auth import repository as admins
from controlplane.auth import session_repository, sessions
from controlplane.auth import tenant_repository as users
from controlplane.auth.models import Role, TenantRef
from controlplane.auth.passwords import Passwords
from controlplane.auth.ratelimit import RateLimiter
from controlplane.auth.tokens import TokenSigner
from controlplane.db import AsyncConn
from controlplane.errors import InvalidCredentials, InvalidToken, TooManyRequests
from controlplane.settings import AuthSettings

#: ``aud`` of tokens for the platform API and for one tenant's API.
PLATFORM_AUDIENCE = "platform"
TENANT_AUDIENCE = "tenant"


class TokenPair(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str | None = None
    refresh_expires_in: int | None = None


class Logins:
    """Issues login sessions, refreshes them and issues impersonation tokens (base of ``Authenticator``)."""

    settings: AuthSettings
    signer: TokenSigner
    passwords: Passwords
    limiter: RateLimiter
    _refresh_key: bytes

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
        tenant: TenantRef,
        email: str,
        password: str,
        *,
        source_address: str | None,
        user_agent: str | None,
    ) -> tuple[TokenPair, int]:
        """Tokens for a tenant user, and the user's id; the caller commits."""
        login_key, row = await users.login_lookup(conn, email.strip())
        keys = await self._throttle(f"{tenant.id}:{login_key}", source_address)
        if row is None:
            await self.passwords.verify_dummy(password)
            raise await self._failed(keys)
        if not await self.passwords.verify(row["password_hash"], password) or row["disabled"]:
            raise await self._failed(keys)
        await self.limiter.clear(keys[0][0], int(self.settings.login_window))
        if self.passwords.needs_rehash(row["password_hash"]):
            await users.update_user(conn, row["id"], {"password_hash": await self.passwords.hash(password)})
        pair = await self.open_tenant_session(
            conn, tenant, row["id"], Role(row["tenant_role"]), source_address=source_address, user_agent=user_agent
        )
        return pair, row["id"]

    async def open_tenant_session(
        self,
        conn: AsyncConn,
        tenant: TenantRef,
        user_id: int,
        role: Role,
        *,
        source_address: str | None,
        user_agent: str | None,
    ) -> TokenPair:
        """A login session and its tokens for a user whose identity is already established (a login that
        verified the password, or a signup that has just set it); the caller commits."""
        await users.touch_login(conn, user_id)
        session_id, refresh = await sessions.open_session(
            conn,
            "auth_sessions",
            user_id,
            key=self._refresh_key,
            ttl=self.settings.refresh_token_ttl,
            source_address=source_address,
            user_agent=user_agent,
        )
        return self._tenant_pair(tenant, user_id, role, session_id, refresh)

    def _tenant_pair(
        self, tenant: TenantRef, user_id: int, role: Role, session_id: uuid.UUID, refresh: str
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

    async def refresh_tenant(self, conn: AsyncConn, tenant: TenantRef, refresh_token: str) -> TokenPair:
        """New tokens for a live session (the old refresh token is spent; within ``refresh_grace`` it
        gets the same successor again). Replaying one spent earlier raises ``RefreshReplayed`` after
        revoking the session: the caller must commit on it."""
        session, new_refresh = await sessions.rotate(
            conn, "auth_sessions", refresh_token, key=self._refresh_key, grace=self.settings.refresh_grace
        )
        user = await users.get_user(conn, session.user_id)
        if user is None or user["disabled"]:
            await session_repository.revoke(conn, "auth_sessions", session.id)
            raise InvalidToken("this account is disabled")
        return self._tenant_pair(tenant, user["id"], Role(user["tenant_role"]), session.id, new_refresh)

    def impersonation_token(
        self, tenant: TenantRef, admin_id: uuid.UUID, role: Role, admin_session: uuid.UUID
    ) -> TokenPair:
        """A token for ``admin_id`` acting as ``role`` in ``tenant``, alive while ``admin_session`` is."""
        ttl = self.settings.impersonation_ttl
        access = self.signer.issue(
            audience=TENANT_AUDIENCE,
            subject=f"admin:{admin_id}",
            role=role.value,
            ttl=ttl,
            tenant_id=tenant.id,
            session_id=admin_session,
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
        login_key, found = await admins.admin_login_lookup(conn, email.strip())
        keys = await self._throttle(f"platform:{login_key}", source_address)
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
                key=self._refresh_key,
                ttl=self.settings.refresh_token_ttl,
                source_address=source_address,
                user_agent=user_agent,
            )
        return self._platform_pair(admin.id, session_id, refresh)

    async def refresh_platform(self, conn: AsyncConn, refresh_token: str) -> TokenPair:
        """Like ``refresh_tenant``, in the control database: the caller commits, on ``InvalidToken`` too."""
        session, new_refresh = await sessions.rotate(
            conn, "platform_sessions", refresh_token, key=self._refresh_key, grace=self.settings.refresh_grace
        )
        admin = await admins.get_admin(conn, session.user_id)
        if admin is None or admin.disabled:
            await session_repository.revoke(conn, "platform_sessions", session.id)
            raise InvalidToken("this account is disabled")
        return self._platform_pair(admin.id, session.id, new_refresh)
