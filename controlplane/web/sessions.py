"""The signed-in person of a page, kept in HttpOnly cookies and handed on as the APIs' own credential.

Signing in through a page opens the same login session the APIs' ``/auth/token`` opens and stores its
tokens in two cookies, scoped to the pages they serve:

- ``cv_access`` (the access JWT) and ``cv_refresh`` (the refresh token): HttpOnly, SameSite=Lax,
  ``Secure`` over HTTPS; path ``/admin/ui`` for a super-admin, ``/t/{slug}`` (or ``/`` on the tenant's
  subdomain) for a tenant user, so one workspace's cookies are never sent to another's pages.
- ``session_middleware`` (on every page router) drops any ``Authorization`` header the request came
  with, verifies ``cv_access`` (in memory) and, when it has expired, trades ``cv_refresh`` for new
  tokens (a spent or revoked session clears both cookies). The live access token becomes the
  request's ``Authorization: Bearer`` header, so ``admin_guard`` and the tenant API's
  authentication, session checks and permissions decide exactly as they do for the APIs: a page holds no
  more than its owner's current rights, and loses them with the session.
- ``cv_workspaces`` (path ``/``, HttpOnly, signed): the slugs this browser is signed in to, for the
  workspace switcher; it names workspaces only, and each keeps its own session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from http.cookies import SimpleCookie
from typing import Any, Literal

from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.auth.service import PLATFORM_AUDIENCE, Authenticator, TokenPair
from controlplane.auth.tokens import AccessClaims
from controlplane.errors import CardVaultError, InvalidToken
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
from controlplane.routing.resolver import resolve, resolve_slug
from controlplane.web.security import CSRF_COOKIE, CSRF_COOKIE_KEY, SESSION_ID_KEY, new_csrf_cookie

ACCESS_COOKIE = "cv_access"
REFRESH_COOKIE = "cv_refresh"
WORKSPACES_COOKIE = "cv_workspaces"
#: Where the admin pages live (and their cookies' path).
ADMIN_UI_PATH = "/admin/ui"
#: ``scope["state"]`` key: ``Set-Cookie`` values the response must carry (see ``add_cookie``).
_COOKIES_KEY = "cardvault.web_cookies"
_MAX_WORKSPACES = 20
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

Kind = Literal["admin", "tenant"]


def cookie_header(
    name: str, value: str, *, path: str, max_age: int | None, secure: bool, same_site: str = "Lax"
) -> str:
    """A ``Set-Cookie`` value: always HttpOnly; ``max_age`` 0 deletes, None lasts for the browser session."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", f"SameSite={same_site}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def add_cookie(scope: Scope, header: str) -> None:
    """Queue a ``Set-Cookie`` for the response of this request (``session_middleware`` sends it)."""
    scope.setdefault("state", {}).setdefault(_COOKIES_KEY, []).append(header)


def is_secure(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def tenant_base(scope: Scope) -> str:
    """The tenant app's base path: ``/t/{slug}`` when the path names the tenant, ``""`` on its subdomain
    (and in single-tenant mode, where the app is at ``/``)."""
    slug = scope.get("path_params", {}).get(TENANT_SLUG_PARAM)
    base = f"/t/{slug}"
    path = scope.get("path", "")
    return base if isinstance(slug, str) and (path == base or path.startswith(f"{base}/")) else ""


def cookie_path(kind: Kind, scope: Scope) -> str:
    return ADMIN_UI_PATH if kind == "admin" else (tenant_base(scope) or "/")


def set_session(kind: Kind, scope: Scope, pair: TokenPair) -> None:
    """Store a login session's tokens in the cookies of ``kind``'s pages."""
    path, secure = cookie_path(kind, scope), is_secure(scope)
    add_cookie(scope, cookie_header(ACCESS_COOKIE, pair.access_token, path=path, max_age=None, secure=secure))
    if pair.refresh_token is not None:
        add_cookie(
            scope,
            cookie_header(
                REFRESH_COOKIE, pair.refresh_token, path=path, max_age=pair.refresh_expires_in, secure=secure
            ),
        )


def clear_session(kind: Kind, scope: Scope) -> None:
    path, secure = cookie_path(kind, scope), is_secure(scope)
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        add_cookie(scope, cookie_header(name, "", path=path, max_age=0, secure=secure))


def request_cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a garbled Cookie header counts as none
                return {}
    return {name: morsel.value for name, morsel in jar.items()}


# -- the workspace list (switcher) -----------------------------------------------------------------------


def _workspaces_mac(key: bytes, body: str) -> str:
    mac = hmac.new(key, f"workspaces|{body}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def workspaces(scope: Scope, key: bytes) -> list[str]:
    """The slugs this browser is signed in to (as its signed ``cv_workspaces`` cookie says)."""
    raw = request_cookies(scope).get(WORKSPACES_COOKIE, "")
    body, _, mac = raw.rpartition(".")
    if not body or not hmac.compare_digest(mac, _workspaces_mac(key, body)):
        return []
    return [slug for slug in body.split("~") if _SLUG.match(slug)][:_MAX_WORKSPACES]


def remember_workspaces(scope: Scope, key: bytes, slugs: Iterable[str]) -> None:
    """Replace the browser's workspace list (most recent first, deduplicated, bounded)."""
    unique = list(dict.fromkeys(slug for slug in slugs if _SLUG.match(slug)))[:_MAX_WORKSPACES]
    body = "~".join(unique)
    value = f"{body}.{_workspaces_mac(key, body)}" if unique else ""
    add_cookie(
        scope,
        cookie_header(
            WORKSPACES_COOKIE, value, path="/", max_age=400 * 86400 if unique else 0, secure=is_secure(scope)
        ),
    )


# -- the middleware --------------------------------------------------------------------------------------


async def _verified(auth: Authenticator, token: str | None) -> AccessClaims | None:
    if not token:
        return None
    try:
        credential = await auth.credential(f"Bearer {token}")
    except InvalidToken:
        return None
    return credential if isinstance(credential, AccessClaims) else None


def _fits(kind: Kind, claims: AccessClaims) -> bool:
    return (claims.aud == PLATFORM_AUDIENCE) == (kind == "admin")


async def _refreshed(kind: Kind, scope: Scope, state: State, refresh_token: str) -> TokenPair | None:
    """New tokens for the session of ``refresh_token``, or None when it cannot be refreshed."""
    auth: Authenticator = state[AUTH_STATE_KEY]
    try:
        if kind == "admin":
            platform: Platform = state[PLATFORM_STATE_KEY]
            async with platform.control.connection() as conn, conn.transaction():
                try:
                    return await auth.refresh_platform(conn, refresh_token)
                except InvalidToken:
                    return None  # committed: a replay revokes the session
        slug = resolve_slug(
            scope["path_params"].get(TENANT_SLUG_PARAM),
            _header(scope, b"host"),
            _header(scope, TENANT_HEADER.encode()),
            state.get(BASE_DOMAIN_STATE_KEY),
        )
        tenant = await resolve(state[TENANT_CACHE_STATE_KEY], slug)
        pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
        pair: TokenPair | None = None
        async with pools.connection(tenant.id) as conn:
            try:
                pair = await auth.refresh_tenant(conn, tenant, refresh_token)
            except InvalidToken:
                pair = None  # committed: a replay revokes the session
        if pair is None:
            await auth.principals_changed(tenant.id)
        return pair
    except CardVaultError:  # unknown or unavailable tenant: the page itself will say so
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def session_middleware(kind: Kind) -> Any:
    """Middleware of ``kind``'s page routers (see the module docstring)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def pages(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            state = scope["litestar_app"].state
            scope_state = scope.setdefault("state", {})
            cookies = request_cookies(scope)
            csrf = cookies.get(CSRF_COOKIE, "")
            if not 16 <= len(csrf) <= 64:
                csrf = new_csrf_cookie()
                add_cookie(
                    scope,
                    cookie_header(
                        CSRF_COOKIE, csrf, path="/", max_age=None, secure=is_secure(scope), same_site="Strict"
                    ),
                )
            scope_state[CSRF_COOKIE_KEY] = csrf
            headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            access = cookies.get(ACCESS_COOKIE)
            claims = await _verified(state[AUTH_STATE_KEY], access)
            refresh_token = cookies.get(REFRESH_COOKIE)
            if (claims is None or not _fits(kind, claims)) and refresh_token:
                pair = await _refreshed(kind, scope, state, refresh_token)
                if pair is None:
                    clear_session(kind, scope)
                else:
                    set_session(kind, scope, pair)
                    access = pair.access_token
                    claims = await _verified(state[AUTH_STATE_KEY], access)
            if claims is not None and access and _fits(kind, claims):
                headers.append((b"authorization", f"Bearer {access}".encode("latin-1")))
                scope_state[SESSION_ID_KEY] = claims.sid
            scope["headers"] = headers

            async def send_with_cookies(message: Message) -> None:
                if message["type"] == "http.response.start":
                    queued = scope_state.get(_COOKIES_KEY, ())
                    message["headers"] = [
                        *message.get("headers", ()),
                        *((b"set-cookie", value.encode("latin-1")) for value in queued),
                    ]
                await send(message)

            await app(scope, receive, send_with_cookies)

        return pages

    return middleware
