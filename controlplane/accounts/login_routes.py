"""How a credential is obtained: login, refresh, logout and invitations (``/auth/*`` for the platform or a
tenant, ``/t/{slug}/auth/*`` for a tenant), and a super-admin's impersonation of a tenant
(``POST /admin/tenants/{slug}/impersonate``).

``/auth/...`` serves the tenant the request names by its Host (``{slug}.<base domain>``) or its
``X-Tenant`` header, and the platform (super-admins) when it names none. ``/t/{slug}/auth/...`` always
serves that tenant. The credentials themselves are ``controlplane.auth``'s; what happens is recorded
here, in the tenant's ``audit_log`` (``auth.login``, ``auth.logout``, ``user.invite.accept``,
``impersonation.start``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, Router, post
from litestar.params import FromPath, FromQuery, JSONBody

from controlplane.accounts import repository as accounts
from controlplane.audit import repository as audit
from controlplane.audit.routes import audited
from controlplane.auth import impersonation
from controlplane.auth import session_repository as sessions
from controlplane.auth.models import Role
from controlplane.auth.passwords import validate_password
from controlplane.auth.service import PLATFORM_AUDIENCE, Authenticator, TokenPair, bearer, hash_secret
from controlplane.auth.service import subject_id as token_subject
from controlplane.context import AuditContext, TenantContext
from controlplane.errors import InvalidCredentials, InvalidToken, NotFound
from controlplane.http.admin import admin_audit_context, admin_principal
from controlplane.http.context import request_id, source_address
from controlplane.http.state import (
    AUTH_STATE_KEY,
    BASE_DOMAIN_STATE_KEY,
    PLATFORM_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_HEADER,
    TENANT_POOLS_STATE_KEY,
    TENANT_SLUG_PARAM,
)
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.routing.cache import TenantCache
from controlplane.routing.errors import TenantRequired
from controlplane.routing.resolver import resolve, resolve_slug
from controlplane.sso import repository as sso
from controlplane.sso.errors import PasswordLoginDisabled

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^\x00\s]+@[^\x00\s]+$")]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")]


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Secret


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    refresh_token: Secret


class AcceptInvite(msgspec.Struct, forbid_unknown_fields=True):
    invite_token: Secret
    password: Secret


def _auth(request: Request[Any, Any, Any]) -> Authenticator:
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    return auth


async def _named_tenant(request: Request[Any, Any, Any]) -> TenantContext | None:
    """The tenant the request names (path, Host or X-Tenant), or None for the platform."""
    path_slug = request.path_params.get(TENANT_SLUG_PARAM)
    try:
        slug = resolve_slug(
            path_slug if isinstance(path_slug, str) else None,
            request.headers.get("host"),
            request.headers.get(TENANT_HEADER),
            request.app.state.get(BASE_DOMAIN_STATE_KEY),
        )
    except TenantRequired:
        return None
    cache: TenantCache = request.app.state[TENANT_CACHE_STATE_KEY]
    return await resolve(cache, slug)


def _pools(request: Request[Any, Any, Any]) -> TenantPools:
    pools: TenantPools = request.app.state[TENANT_POOLS_STATE_KEY]
    return pools


def _platform(request: Request[Any, Any, Any]) -> Platform:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    return platform


async def _check_password_login(request: Request[Any, Any, Any], tenant: TenantContext) -> None:
    """409 ``password_login_disabled`` if the tenant signs in through its identity provider only
    (a super-admin's impersonation stays open as the break-glass)."""
    async with _platform(request).control.connection() as conn:
        if not await sso.password_login_allowed(conn, tenant.id):
            raise PasswordLoginDisabled("this workspace signs in with single sign-on: /t/{slug}/auth/sso/start")


def _client(request: Request[Any, Any, Any]) -> str | None:
    """The peer's address as given (the throttle's key; stored sessions keep it only if it is an IP)."""
    return request.client.host if request.client else None


def _audit(request: Request[Any, Any, Any], actor: str, label: str = "") -> AuditContext:
    return AuditContext(
        actor=actor,
        actor_label=label,
        source_address=source_address(request.scope),
        request_id=request_id(request.scope),
    )


@post("/token", status_code=200, summary="Log in with email and password: access JWT + refresh token")
async def token(request: Request[Any, Any, Any], data: JSONBody[LoginRequest]) -> TokenPair:
    auth = _auth(request)
    address = _client(request)
    agent = request.headers.get("user-agent", "")[:256] or None
    tenant = await _named_tenant(request)
    if tenant is not None:
        await _check_password_login(request, tenant)
        async with _pools(request).connection(tenant.id) as conn:
            pair, user_id = await auth.login_tenant(
                conn, tenant, data.email, data.password, source_address=address, user_agent=agent
            )
            await audit.record_tenant(conn, _audit(request, f"user:{user_id}", data.email), "auth.login")
        return pair
    async with _platform(request).control.connection() as conn:
        return await auth.login_platform(conn, data.email, data.password, source_address=address, user_agent=agent)


@post("/refresh", status_code=200, summary="Trade a refresh token for new tokens (the old one is spent)")
async def refresh(request: Request[Any, Any, Any], data: JSONBody[RefreshRequest]) -> TokenPair:
    auth = _auth(request)
    tenant = await _named_tenant(request)
    replayed: InvalidToken | None = None
    pair: TokenPair | None = None
    if tenant is not None:
        async with _pools(request).connection(tenant.id) as conn:
            try:
                pair = await auth.refresh_tenant(conn, tenant, data.refresh_token)
            except InvalidToken as exc:  # commit what it did (a replay revokes the session)
                replayed = exc
        if replayed is not None:
            await auth.principals_changed(tenant.id)
    else:
        async with _platform(request).control.connection() as conn, conn.transaction():
            try:
                pair = await auth.refresh_platform(conn, data.refresh_token)
            except InvalidToken as exc:
                replayed = exc
    if replayed is not None:
        raise replayed
    assert pair is not None
    return pair


@post("/logout", status_code=204, summary="End the session of the access token (all_sessions=true: every session)")
async def logout(request: Request[Any, Any, Any], all_sessions: FromQuery[bool] = False) -> Response[None]:
    auth = _auth(request)
    claims = await auth.signer.verify(bearer(request.headers.get("authorization")))
    tenant = await _named_tenant(request)
    if claims.sid is None or claims.imp is not None:
        raise InvalidToken(
            "this token has no session of its own to end (an impersonation ends with the admin's platform session)"
        )
    session_id = uuid.UUID(claims.sid)
    if tenant is not None:
        auth.check_tenant(tenant, claims)
        async with _pools(request).connection(tenant.id) as conn:
            principal = await auth.tenant_principal(conn, tenant, claims)
            assert principal.user_id is not None
            if all_sessions:
                await sessions.revoke_all(conn, "auth_sessions", principal.user_id)
            else:
                await sessions.revoke(conn, "auth_sessions", session_id)
            ctx = _audit(request, principal.subject, principal.label)
            await audit.record_tenant(conn, ctx, "auth.logout", details={"all_sessions": all_sessions})
        await auth.principals_changed(tenant.id)
        return Response(None, status_code=204)
    if claims.aud != PLATFORM_AUDIENCE:
        raise InvalidToken("a tenant token: log out through its tenant (/t/{slug}/auth/logout)")
    admin_id = token_subject(claims, "admin")
    async with _platform(request).control.connection() as conn, conn.transaction():
        if all_sessions:
            await sessions.revoke_all(conn, "platform_sessions", admin_id)
        else:
            await sessions.revoke(conn, "platform_sessions", session_id)
    auth.forget_admin_sessions()  # impersonations made in those sessions end here at once
    return Response(None, status_code=204)


@post("/invitations/accept", status_code=200, summary="Set the password of an invited account and log in")
async def accept_invitation(request: Request[Any, Any, Any], data: JSONBody[AcceptInvite]) -> TokenPair:
    auth = _auth(request)
    tenant = await _named_tenant(request)
    if tenant is None:
        raise NotFound("invitations belong to a tenant: /t/{slug}/auth/invitations/accept")
    await _check_password_login(request, tenant)
    password = validate_password(data.password)
    password_hash = await auth.passwords.hash(password)
    async with _pools(request).connection(tenant.id) as conn:
        user = await accounts.accept_invite(conn, hash_secret(data.invite_token), password_hash)
        if user is None:
            raise InvalidCredentials("unknown, used or expired invitation")
        await audit.record_tenant(conn, _audit(request, f"user:{user['id']}", user["email"]), "user.invite.accept")
    # Committed; now log in as any login would (same throttle, same session).
    async with _pools(request).connection(tenant.id) as conn:
        pair, _ = await auth.login_tenant(
            conn,
            tenant,
            user["email"],
            password,
            source_address=_client(request),
            user_agent=request.headers.get("user-agent", "")[:256] or None,
        )
    return pair


class ImpersonationRequest(msgspec.Struct, forbid_unknown_fields=True):
    #: Why: kept in the platform audit and in the tenant's own audit log.
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500, pattern=r"^[^\x00]*$")]
    role: Literal["tenant_admin", "collection_manager", "user"] = "tenant_admin"


@post(
    "/admin/tenants/{slug:str}/impersonate",
    status_code=200,
    tags=["tenants"],
    summary="A super-admin's short-lived token inside an active tenant (audited in both trails)",
)
async def impersonate(
    request: Request[Any, Any, Any], slug: FromPath[str], data: JSONBody[ImpersonationRequest]
) -> TokenPair:
    details = {"reason": data.reason.strip(), "role": data.role}
    async with audited(request, "tenant.impersonate", slug=slug, details=details):
        principal = admin_principal(request)
        impersonation.check_impersonator(principal)  # before the tenant: automation gets 403 whatever the slug
        cache: TenantCache = request.app.state[TENANT_CACHE_STATE_KEY]
        tenant = await resolve(cache, slug)
        started = impersonation.start(_auth(request), tenant, principal, role=Role(data.role), reason=data.reason)
        # Into the tenant's own audit log before the token is handed out: if that cannot be written, no token.
        ctx = msgspec.structs.replace(admin_audit_context(request), impersonator=principal.subject)
        async with _pools(request).connection(tenant.id) as conn:
            await audit.record_tenant(conn, ctx, "impersonation.start", details=started.details)
        return started.pair


_HANDLERS = [token, refresh, logout, accept_invitation]

#: ``/auth/*``: platform, or the tenant named by Host / X-Tenant.
AUTH_ROUTER = Router(path="/auth", route_handlers=_HANDLERS, tags=["auth"], security=[])
#: ``/t/{slug}/auth/*``: the tenant in the path.
TENANT_AUTH_ROUTER = Router(path=f"/t/{{{TENANT_SLUG_PARAM}:str}}/auth", route_handlers=_HANDLERS, tags=["auth"])
#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_LOGIN_HANDLERS = [impersonate]
