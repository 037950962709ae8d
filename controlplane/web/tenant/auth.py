"""Signing in and out of a workspace (the tenant app). The form opens the same login session as
``POST /t/{slug}/auth/token`` (same throttle, same ``auth.login`` audit row, same refusal when the
workspace signs in through its identity provider only) and keeps its tokens in this workspace's cookies;
signing in lands on the cards list and adds the workspace to the browser's switcher list (signing out
takes it off). A workspace with single sign-on also offers "Sign in with single sign-on" (``sso``), and
only that when its password sign-in is off."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Template

from controlplane.audit import repository as audit
from controlplane.auth import session_repository as sessions
from controlplane.auth.service import Authenticator
from controlplane.auth.tokens import AccessClaims
from controlplane.context import AuditContext, TenantContext
from controlplane.errors import InvalidCredentials, Unauthorized, WrongTenant
from controlplane.http.context import request_id, source_address
from controlplane.http.state import AUTH_STATE_KEY, PLATFORM_STATE_KEY, TENANT_POOLS_STATE_KEY
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.sso import repository as sso
from controlplane.sso.service import SSO_TIERS
from controlplane.web.errors import safe_next
from controlplane.web.pages import page, see_other, web_keys
from controlplane.web.sessions import clear_session, remember_workspaces, set_session, tenant_base, workspaces

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


def _auth(request: Request[Any, Any, Any]) -> Authenticator:
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    return auth


def _pools(request: Request[Any, Any, Any]) -> TenantPools:
    pools: TenantPools = request.app.state[TENANT_POOLS_STATE_KEY]
    return pools


async def login_options(request: Request[Any, Any, Any], tenant: TenantContext) -> tuple[bool, bool]:
    """``(password sign-in allowed, single sign-on offered)`` for this workspace."""
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    async with platform.control.connection() as conn:
        config = await sso.get_config(conn, tenant.id)
    if config is None:
        return True, False
    return bool(config["password_login"]), tenant.tier in SSO_TIERS


async def password_login_allowed(request: Request[Any, Any, Any], tenant: TenantContext) -> bool:
    return (await login_options(request, tenant))[0]


async def sign_in_form(
    request: Request[Any, Any, Any],
    tenant: TenantContext,
    *,
    error: str | None = None,
    email: str = "",
    status: int = 401,
) -> Template:
    """The sign-in page; with ``error``, answered with ``status``."""
    base = tenant_base(request.scope)
    password_login, single_sign_on = await login_options(request, tenant)
    return page(
        request,
        "tenant/sign_in.html",
        title=f"Sign in to {tenant.slug}",
        tenant=tenant,
        next=safe_next(request.query_params.get("next"), f"{base}/cards"),
        email=email or request.query_params.get("email", "")[:254],
        password_login=password_login,
        single_sign_on=single_sign_on,
        flash_error=error,
        status_code=status if error else 200,
    )


@get("/", name="tenant_ui_home")
async def home(request: Request[Any, Any, Any], tenant: NamedDependency[TenantContext]) -> Response[Any]:
    """The cards list when signed in, else the sign-in form (where the switcher's links lead). A workspace
    whose session is gone (ended elsewhere, expired) leaves the switcher list here."""
    if await _session_claims(request, tenant) is not None:
        return see_other(request, f"{tenant_base(request.scope)}/cards")
    forget_workspace(request, tenant)
    return await sign_in_form(request, tenant)


async def _session_claims(request: Request[Any, Any, Any], tenant: TenantContext) -> AccessClaims | None:
    """The claims of the request's live login session in this workspace, if it has one."""
    auth = _auth(request)
    try:
        claims = await auth.credential(request.headers.get("authorization"))
        auth.check_tenant(tenant, claims)
        async with _pools(request).connection(tenant.id, autocommit=True) as conn:
            await auth.tenant_principal(conn, tenant, claims)
    except (Unauthorized, WrongTenant):
        return None
    return claims if isinstance(claims, AccessClaims) else None


@get("/sign-in", name="tenant_ui_sign_in_form")
async def sign_in_page(request: Request[Any, Any, Any], tenant: NamedDependency[TenantContext]) -> Template:
    return await sign_in_form(request, tenant)


@post("/sign-in", name="tenant_ui_sign_in", status_code=303)
async def sign_in(request: Request[Any, Any, Any], tenant: NamedDependency[TenantContext], data: Form) -> Response[Any]:
    email, password = data.get("email", "").strip(), data.get("password", "")
    if not email or not password or len(email) > 254 or len(password) > 1024:
        return await sign_in_form(request, tenant, error="Enter your email and password.", email=email[:254])
    if not await password_login_allowed(request, tenant):
        return await sign_in_form(request, tenant, error="This workspace signs in with single sign-on.")
    agent = request.headers.get("user-agent", "")[:256] or None
    address = source_address(request.scope)
    try:
        async with _pools(request).connection(tenant.id) as conn:
            pair, user_id = await _auth(request).login_tenant(
                conn, tenant, email, password, source_address=address, user_agent=agent
            )
            context = AuditContext(
                actor=f"user:{user_id}", actor_label=email, source_address=address, request_id=request_id(request.scope)
            )
            await audit.record_tenant(conn, context, "auth.login")
    except InvalidCredentials:
        return await sign_in_form(request, tenant, error="Wrong email or password.", email=email)
    signed_in(request, tenant, pair)
    return see_other(request, safe_next(data.get("next"), f"{tenant_base(request.scope)}/cards"))


def signed_in(request: Request[Any, Any, Any], tenant: TenantContext, pair: Any) -> None:
    """Keep a new login session in this workspace's cookies and put it first in the switcher list."""
    set_session("tenant", request.scope, pair)
    keys = web_keys(request)
    remember_workspaces(request.scope, keys.workspaces, [tenant.slug, *workspaces(request.scope, keys.workspaces)])


def forget_workspace(request: Request[Any, Any, Any], tenant: TenantContext) -> None:
    """Take this workspace off the browser's switcher list (if it is on it)."""
    keys = web_keys(request)
    listed = workspaces(request.scope, keys.workspaces)
    if tenant.slug in listed:
        remember_workspaces(request.scope, keys.workspaces, [slug for slug in listed if slug != tenant.slug])


@post("/sign-out", name="tenant_ui_sign_out", status_code=303)
async def sign_out(request: Request[Any, Any, Any], tenant: NamedDependency[TenantContext]) -> Response[Any]:
    """End this workspace's login session (if any) and forget it in the switcher list."""
    auth = _auth(request)
    claims = await _session_claims(request, tenant)
    if claims is not None and claims.sid is not None and claims.imp is None:
        async with _pools(request).connection(tenant.id) as conn:
            await sessions.revoke(conn, "auth_sessions", uuid.UUID(claims.sid))
            context = AuditContext(
                actor=claims.sub, source_address=source_address(request.scope), request_id=request_id(request.scope)
            )
            await audit.record_tenant(conn, context, "auth.logout", details={"all_sessions": False})
        await auth.principals_changed(tenant.id)
    clear_session("tenant", request.scope)
    forget_workspace(request, tenant)
    return see_other(request, f"{tenant_base(request.scope)}/sign-in")


PUBLIC_HANDLERS: list[Any] = [home, sign_in_page, sign_in, sign_out]
HANDLERS: list[Any] = []
