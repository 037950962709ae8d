"""HTTP face of enterprise SSO.

- ``PUT/GET/DELETE /admin/tenants/{slug}/sso``: a super-admin sets, reads or removes a tenant's provider
  (platform-audited as ``tenant.sso.set`` / ``tenant.sso.delete``).
- ``GET/PUT /t/{slug}/api/sso`` (tenant API, ``settings:manage``): the tenant's admins do the same for
  their own tenant (audited in its ``audit_log`` as ``sso.update``). Other tiers: 403 ``sso_not_in_tier``.
- ``GET /t/{slug}/auth/sso/start``: 302 to the provider; a short-lived HttpOnly SameSite=Lax cookie binds
  the sign-in to this browser. ``GET /t/{slug}/auth/sso/callback``: the provider's answer; the session
  tokens as JSON (``TokenPair``, like ``POST /t/{slug}/auth/token``).

The client secret goes in and is never shown (``client_secret_set``).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, delete, get, put
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from controlplane.audit import repository as audit
from controlplane.audit.routes import audited
from controlplane.auth.models import Permission
from controlplane.auth.service import TokenPair
from controlplane.context import AuditContext, TenantContext, TenantRequest
from controlplane.http.context import request_id, source_address
from controlplane.http.state import SSO_STATE_KEY, TENANT_CACHE_STATE_KEY, TENANT_SLUG_PARAM
from controlplane.http.tenant_api import requires
from controlplane.routing.cache import TenantCache
from controlplane.routing.resolver import resolve
from controlplane.sso.errors import SsoRejected
from controlplane.sso.models import SsoConfig, SsoConfigUpdate
from controlplane.sso.service import STATE_TTL, Sso, check_tier

#: The cookie binding a started sign-in to the browser (path-scoped to the tenant's SSO routes).
COOKIE = "cardvault_sso"
Ctx = NamedDependency[TenantRequest]


def _sso(request: Request[Any, Any, Any]) -> Sso:
    sso: Sso = request.app.state[SSO_STATE_KEY]
    return sso


async def _tenant(request: Request[Any, Any, Any], slug: str) -> TenantContext:
    cache: TenantCache = request.app.state[TENANT_CACHE_STATE_KEY]
    return await resolve(cache, slug)


# -- super-admin ---------------------------------------------------------------------------------


@get("/admin/tenants/{slug:str}/sso", tags=["sso"], summary="A tenant's single sign-on settings (no secret)")
async def admin_get_sso(request: Request[Any, Any, Any], slug: FromPath[str]) -> SsoConfig:
    return await _sso(request).get(await _tenant(request, slug))


@put("/admin/tenants/{slug:str}/sso", tags=["sso"], summary="Set a tenant's single sign-on (enterprise tier)")
async def admin_put_sso(
    request: Request[Any, Any, Any], slug: FromPath[str], data: JSONBody[SsoConfigUpdate]
) -> SsoConfig:
    details = {"issuer": data.issuer, "password_login": data.password_login}
    async with audited(request, "tenant.sso.set", slug=slug, details=details):
        return await _sso(request).put(await _tenant(request, slug), data)


@delete("/admin/tenants/{slug:str}/sso", tags=["sso"], status_code=204, summary="Remove a tenant's single sign-on")
async def admin_delete_sso(request: Request[Any, Any, Any], slug: FromPath[str]) -> None:
    async with audited(request, "tenant.sso.delete", slug=slug):
        await _sso(request).delete(await _tenant(request, slug))


# -- tenant admins -------------------------------------------------------------------------------


@get("/sso", opt=requires(Permission.SETTINGS_MANAGE), tags=["sso"], summary="This tenant's single sign-on")
async def tenant_get_sso(request: Request[Any, Any, Any], tenant_request: Ctx) -> SsoConfig:
    check_tier(tenant_request.tenant)
    return await _sso(request).get(tenant_request.tenant)


@put("/sso", opt=requires(Permission.SETTINGS_MANAGE), tags=["sso"], summary="Set this tenant's single sign-on")
async def tenant_put_sso(
    request: Request[Any, Any, Any], tenant_request: Ctx, data: JSONBody[SsoConfigUpdate]
) -> SsoConfig:
    config = await _sso(request).put(tenant_request.tenant, data)
    details = {"issuer": data.issuer, "password_login": data.password_login, "secret_changed": bool(data.client_secret)}
    await audit.record_tenant(tenant_request.conn, tenant_request.audit, "sso.update", details=details)
    return config


# -- sign-in -------------------------------------------------------------------------------------


def _cookie(request: Request[Any, Any, Any], slug: str, value: str, max_age: int) -> Cookie:
    sso = _sso(request)
    return Cookie(
        key=COOKIE,
        value=value,
        path=f"/t/{slug}/auth/sso",
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=sso.redirect_uri_is_https,
    )


@get("/start", summary="Start a single sign-on: redirect to the tenant's identity provider")
async def sso_start(request: Request[Any, Any, Any]) -> Response[None]:
    slug = request.path_params[TENANT_SLUG_PARAM]
    started = await _sso(request).start(await _tenant(request, slug))
    cookie = _cookie(request, slug, started.browser_token, int(STATE_TTL.total_seconds()))
    return Response(None, status_code=302, headers={"Location": started.url}, cookies=[cookie])


@get("/callback", summary="The identity provider's answer: session tokens (as POST /auth/token gives)")
async def sso_callback(request: Request[Any, Any, Any]) -> Response[TokenPair]:
    # ``state`` is a reserved handler parameter name in Litestar: read the provider's answer from the query.
    sso_state, code, error = (request.query_params.get(name) for name in ("state", "code", "error"))
    slug = request.path_params[TENANT_SLUG_PARAM]
    tenant = await _tenant(request, slug)
    if error is not None:
        raise SsoRejected(f"the identity provider refused the sign-in: {error[:100]}")
    if not sso_state or not code or len(sso_state) > 200 or len(code) > 2000:
        raise SsoRejected("the identity provider's answer has no state or code")
    ctx = AuditContext(
        actor="anonymous", source_address=source_address(request.scope), request_id=request_id(request.scope)
    )
    pair = await _sso(request).finish(
        tenant,
        state=sso_state,
        code=code,
        browser_token=request.cookies.get(COOKIE),
        ctx=ctx,
        user_agent=request.headers.get("user-agent", "")[:256] or None,
    )
    return Response(pair, cookies=[_cookie(request, slug, "", 0)])


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_SSO_HANDLERS = [admin_get_sso, admin_put_sso, admin_delete_sso]
#: Handlers of the tenant API.
TENANT_SSO_HANDLERS = [tenant_get_sso, tenant_put_sso]
#: ``/t/{slug}/auth/sso/*``: public (the provider's redirect carries no credential of ours).
SSO_AUTH_ROUTER = Router(
    path=f"/t/{{{TENANT_SLUG_PARAM}:str}}/auth/sso",
    route_handlers=[sso_start, sso_callback],
    tags=["auth"],
    security=[],
)
