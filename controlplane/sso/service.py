"""Enterprise SSO's rules: a tenant's provider settings (enterprise tier only, the client secret encrypted
with the master key and never shown), and the sign-in flow.

A sign-in starts with random ``state``, ``nonce``, PKCE verifier and browser token; the control database
keeps the state's hash with the tenant, nonce, verifier and the browser token's hash for ``STATE_TTL``.
The callback spends the state (deleted: a replay finds nothing) only for the same tenant and browser,
exchanges the code, verifies the ID token (``oidc.Discovery``), requires ``email_verified`` and an email
in an allowed domain, then finds the tenant user by email or creates it just in time with the default role
(no password: an empty hash never verifies) and opens the same login session a password login opens.
Audited in the tenant's ``audit_log`` (``auth.login`` with ``method: sso``, ``user.create`` with ``sso``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from controlplane.audit import repository as audit
from controlplane.auth.models import Role
from controlplane.auth.service import Authenticator, TokenPair, hash_secret
from controlplane.cards.service import enforce_quota
from controlplane.context import AuditContext, TenantContext
from controlplane.db import AsyncConn
from controlplane.errors import ValidationFailed
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.registry.models import QuotaType, Tier
from controlplane.sso import repository
from controlplane.sso.errors import SsoNotConfigured, SsoNotInTier, SsoRejected, SsoStateInvalid
from controlplane.sso.models import SsoConfig, SsoConfigUpdate, SsoProvider
from controlplane.sso.oidc import Discovery
from controlplane.usage.quotas import limits_for

#: How long a started sign-in may take (the browser cookie lives as long).
STATE_TTL = dt.timedelta(minutes=10)
SSO_TIERS = frozenset({Tier.ENTERPRISE})


def _config(row: dict[str, Any]) -> SsoConfig:
    return SsoConfig(
        issuer=row["issuer"],
        client_id=row["client_id"],
        client_secret_set=bool(row["client_secret_encrypted"]),
        allowed_domains=list(row["allowed_domains"]),
        default_role=row["default_role"],
        password_login=row["password_login"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def check_tier(tenant: TenantContext) -> None:
    if tenant.tier not in SSO_TIERS:
        raise SsoNotInTier(f"single sign-on is not part of the {tenant.tier.value} tier", tier=tenant.tier.value)


class Started:
    """A started sign-in: where to send the browser, and the token its cookie must carry back."""

    def __init__(self, url: str, browser_token: str) -> None:
        self.url = url
        self.browser_token = browser_token


class Sso:
    def __init__(self, platform: Platform, auth: Authenticator, pools: TenantPools, discovery: Discovery) -> None:
        self._platform = platform
        self._auth = auth
        self._pools = pools
        self.discovery = discovery

    # -- settings -------------------------------------------------------------------------------

    async def get(self, tenant: TenantContext) -> SsoConfig:
        async with self._platform.control.connection() as conn:
            row = await repository.get_config(conn, tenant.id)
        if row is None:
            raise SsoNotConfigured(f"tenant {tenant.slug!r} has no single sign-on", slug=tenant.slug)
        return _config(row)

    async def put(self, tenant: TenantContext, data: SsoConfigUpdate) -> SsoConfig:
        check_tier(tenant)
        secret = self._platform.box.encrypt(data.client_secret) if data.client_secret is not None else None
        async with self._platform.control.connection() as conn:
            row = await repository.put_config(
                conn,
                tenant.id,
                issuer=data.issuer,
                client_id=data.client_id,
                secret_encrypted=secret,
                allowed_domains=sorted({d.lower() for d in data.allowed_domains}),
                default_role=data.default_role,
                password_login=data.password_login,
            )
        if row is None:
            raise ValidationFailed("client_secret is required when single sign-on is first set", field="client_secret")
        return _config(row)

    async def delete(self, tenant: TenantContext) -> None:
        async with self._platform.control.connection() as conn:
            if not await repository.delete_config(conn, tenant.id):
                raise SsoNotConfigured(f"tenant {tenant.slug!r} has no single sign-on", slug=tenant.slug)

    async def password_login_allowed(self, tenant: TenantContext) -> bool:
        async with self._platform.control.connection() as conn:
            return await repository.password_login_allowed(conn, tenant.id)

    async def _provider(self, tenant: TenantContext) -> SsoProvider:
        check_tier(tenant)
        async with self._platform.control.connection() as conn:
            row = await repository.get_config(conn, tenant.id)
        if row is None:
            raise SsoNotConfigured(f"tenant {tenant.slug!r} has no single sign-on", slug=tenant.slug)
        return SsoProvider(
            issuer=row["issuer"],
            client_id=row["client_id"],
            client_secret=self._platform.box.decrypt(row["client_secret_encrypted"]),
            allowed_domains=list(row["allowed_domains"]),
            default_role=row["default_role"],
        )

    async def _user(self, conn: AsyncConn, tenant: TenantContext, email: str, role: str) -> tuple[dict[str, Any], bool]:
        """The user with this email, or a new one (within the ``users`` quota): ``(row, created)``."""
        found = await repository.find_user(conn, email)
        if found is not None:
            return found, False
        await enforce_quota(conn, QuotaType.USERS, limits_for(self._platform.control, tenant.id))
        made = await repository.create_user(conn, email, role)
        if made is not None:
            return made, True
        found = await repository.find_user(conn, email)  # a concurrent sign-in made it
        assert found is not None
        return found, False

    # -- sign-in --------------------------------------------------------------------------------

    @property
    def redirect_uri_is_https(self) -> bool:
        return self._platform.settings.http.base_url.startswith("https://")

    def redirect_uri(self, tenant: TenantContext) -> str:
        return f"{self._platform.settings.http.base_url}/t/{tenant.slug}/auth/sso/callback"

    async def start(self, tenant: TenantContext, redirect_uri: str | None = None) -> Started:
        """Begin a sign-in that the provider answers at ``redirect_uri`` (default: the API's callback)."""
        provider = await self._provider(tenant)
        state, nonce, verifier, browser = (secrets.token_urlsafe(32) for _ in range(4))
        url = await self.discovery.authorization_url(
            provider,
            redirect_uri=redirect_uri or self.redirect_uri(tenant),
            state=state,
            nonce=nonce,
            code_verifier=verifier,
        )
        async with self._platform.control.connection() as conn:
            await repository.save_state(
                conn,
                state_hash=hash_secret(state),
                tenant_id=tenant.id,
                browser_hash=hash_secret(browser),
                nonce=nonce,
                code_verifier=verifier,
                ttl=STATE_TTL,
            )
        return Started(url, browser)

    async def finish(
        self,
        tenant: TenantContext,
        *,
        state: str,
        code: str,
        browser_token: str | None,
        ctx: AuditContext,
        user_agent: str | None,
        redirect_uri: str | None = None,
    ) -> TokenPair:
        """Finish the sign-in answered at ``redirect_uri`` (the one ``start`` was given)."""
        if not browser_token:
            raise SsoStateInvalid("this browser did not start a sign-in (no sign-in cookie)")
        async with self._platform.control.connection() as conn:
            pending = await repository.take_state(conn, hash_secret(state), tenant.id, hash_secret(browser_token))
        if pending is None:
            raise SsoStateInvalid("unknown, used or expired sign-in state, or another browser's or tenant's")
        provider = await self._provider(tenant)
        id_token = await self.discovery.exchange(
            provider,
            code=code,
            redirect_uri=redirect_uri or self.redirect_uri(tenant),
            code_verifier=pending["code_verifier"],
        )
        claims = await self.discovery.verify(provider, id_token, nonce=pending["nonce"])
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or len(email) > 254:
            raise SsoRejected("the identity provider gave no email address")
        if claims.get("email_verified") is not True:
            raise SsoRejected("the identity provider has not verified this email address")
        if email.rsplit("@", 1)[1].lower() not in provider.allowed_domains:
            raise SsoRejected("this email domain may not sign in to this workspace")
        async with self._pools.connection(tenant.id) as conn:
            user, created = await self._user(conn, tenant, email, provider.default_role)
            if user["disabled"]:
                raise SsoRejected("this account is disabled")
            actor = AuditContext(
                actor=f"user:{user['id']}",
                actor_label=user["email"],
                source_address=ctx.source_address,
                request_id=ctx.request_id,
            )
            if created:
                details = {"email": user["email"], "role": user["tenant_role"], "via": "sso"}
                await audit.record_tenant(conn, actor, "user.create", "user", user["id"], details)
            pair = await self._auth.open_tenant_session(
                conn,
                tenant,
                user["id"],
                Role(user["tenant_role"]),
                source_address=ctx.source_address,
                user_agent=user_agent,
            )
            await audit.record_tenant(conn, actor, "auth.login", details={"method": "sso", "issuer": provider.issuer})
        if created:
            await self._auth.principals_changed(tenant.id)
        return pair
