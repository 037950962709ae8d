"""Single sign-on in the browser: ``{base}/sign-in/sso`` sends the browser to the workspace's identity
provider, which answers at ``{base}/sign-in/sso/callback``; the person then lands on the cards list,
signed in like after the password form.

Both ends are the SSO service's own (``controlplane.sso.service.Sso``): the same state, nonce, PKCE and
browser binding (here an HttpOnly SameSite=Lax cookie scoped to ``{base}/sign-in/sso``), the same checks
of the answer, the same just-in-time user and audit rows as the API's ``/auth/sso/start`` and
``/callback``; only the redirect URI differs (this page's callback, given to both ``start`` and
``finish`` so the code exchange names the URI the provider redirected to). It is built from
``CARDVAULT_PUBLIC_URL`` (``/t/{slug}/...``), or from the tenant's subdomain when the page is served
there, never from the request's ``Host``. Whatever goes wrong (the provider refused, a bad or foreign
state, an email domain not allowed, the users quota) is the sign-in page again with the reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response, get
from litestar.di import NamedDependency

from controlplane.accounts import directory
from controlplane.context import AuditContext, TenantContext
from controlplane.errors import CardVaultError
from controlplane.http.context import request_id, source_address
from controlplane.http.state import PLATFORM_STATE_KEY, SSO_STATE_KEY, TENANT_POOLS_STATE_KEY
from controlplane.platform import Platform
from controlplane.sso.service import STATE_TTL, Sso
from controlplane.web.pages import see_other
from controlplane.web.security import PAGE_HEADERS
from controlplane.web.sessions import add_cookie, cookie_header, is_secure, tenant_base
from controlplane.web.tenant.auth import sign_in_form, signed_in

#: The cookie binding a started sign-in to this browser.
COOKIE = "cv_sso"


def _sso(request: Request[Any, Any, Any]) -> Sso:
    sso: Sso = request.app.state[SSO_STATE_KEY]
    return sso


def _platform(request: Request[Any, Any, Any]) -> Platform:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    return platform


def callback_uri(request: Request[Any, Any, Any], tenant: TenantContext) -> str:
    """Where the provider sends the browser back: this page's callback, on the address it was started at."""
    settings = _platform(request).settings
    base_url, base = settings.http.base_url, tenant_base(request.scope)
    if not base and settings.multi_tenant and settings.http.base_domain:  # served on the tenant's subdomain
        parts = urlsplit(base_url)
        port = f":{parts.port}" if parts.port else ""
        base_url = f"{parts.scheme}://{tenant.slug}.{settings.http.base_domain}{port}"
    return f"{base_url}{base}/sign-in/sso/callback"


def _binding_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> None:
    path = f"{tenant_base(request.scope)}/sign-in/sso"
    add_cookie(request.scope, cookie_header(COOKIE, value, path=path, max_age=max_age, secure=is_secure(request.scope)))


@get("/sign-in/sso", name="tenant_ui_sso_start")
async def sso_start(request: Request[Any, Any, Any], tenant: NamedDependency[TenantContext]) -> Response[Any]:
    """To the workspace's identity provider (or the sign-in page saying why not)."""
    try:
        started = await _sso(request).start(tenant, redirect_uri=callback_uri(request, tenant))
    except CardVaultError as exc:
        if exc.status >= 500:
            raise
        error = f"Single sign-on is not available: {exc.detail}."
        return await sign_in_form(request, tenant, error=error, status=exc.status)
    _binding_cookie(request, started.browser_token, int(STATE_TTL.total_seconds()))
    return Response(None, status_code=302, headers={**PAGE_HEADERS, "Location": started.url})


@get("/sign-in/sso/callback", name="tenant_ui_sso_callback")
async def sso_callback(request: Request[Any, Any, Any], tenant: NamedDependency[TenantContext]) -> Response[Any]:
    """The provider's answer: signed in and on to the cards, or the sign-in page with the reason."""
    _binding_cookie(request, "", 0)  # spent either way
    # ``state`` is a reserved handler parameter name in Litestar: read the provider's answer from the query.
    sso_state, code, refused = (request.query_params.get(name) for name in ("state", "code", "error"))
    if refused is not None:
        error = f"The identity provider refused the sign-in ({refused[:100]})."
        return await sign_in_form(request, tenant, error=error)
    if not sso_state or not code or len(sso_state) > 200 or len(code) > 2000:
        return await sign_in_form(request, tenant, error="The identity provider's answer is incomplete; try again.")
    ctx = AuditContext(
        actor="anonymous", source_address=source_address(request.scope), request_id=request_id(request.scope)
    )
    try:
        pair = await _sso(request).finish(
            tenant,
            state=sso_state,
            code=code,
            browser_token=request.cookies.get(COOKIE),
            ctx=ctx,
            user_agent=request.headers.get("user-agent", "")[:256] or None,
            redirect_uri=callback_uri(request, tenant),
        )
    except CardVaultError as exc:
        if exc.status >= 500 and exc.status != 502:
            raise
        return await sign_in_form(request, tenant, error=f"Single sign-on failed: {exc.detail}.", status=exc.status)
    # A just-in-time user is findable at once (the periodic sync would list it later anyway).
    await directory.refresh(_platform(request), request.app.state[TENANT_POOLS_STATE_KEY], tenant.id)
    signed_in(request, tenant, pair)
    return see_other(request, f"{tenant_base(request.scope)}/cards")


HANDLERS: list[Any] = [sso_start, sso_callback]
