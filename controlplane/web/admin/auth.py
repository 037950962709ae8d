"""Signing a super-admin in and out of the dashboard. ``GET /admin/ui/`` is the overview when signed in
and the sign-in form when not; the form opens the same platform login session as ``POST /auth/token``
(same throttle, same audit) and keeps its tokens in the dashboard's cookies."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Template

from controlplane.auth import session_repository as sessions
from controlplane.auth.service import Authenticator
from controlplane.errors import InvalidCredentials, Unauthorized
from controlplane.http.admin import admin_guard, admin_principal
from controlplane.http.context import source_address
from controlplane.http.state import AUTH_STATE_KEY, PLATFORM_STATE_KEY
from controlplane.platform import Platform
from controlplane.web.admin.overview import overview_page
from controlplane.web.errors import safe_next
from controlplane.web.pages import page, see_other
from controlplane.web.sessions import ADMIN_UI_PATH, clear_session, set_session

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
HOME = f"{ADMIN_UI_PATH}/"


def _auth(request: Request[Any, Any, Any]) -> Authenticator:
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    return auth


def _sign_in_form(request: Request[Any, Any, Any], *, error: str | None = None, email: str = "") -> Template:
    target = safe_next(request.query_params.get("next"), HOME)
    return page(
        request,
        "admin/sign_in.html",
        title="Sign in",
        next=target,
        email=email,
        flash_error=error,
        status_code=401 if error else 200,
    )


@get("/", name="admin_ui_home", summary="Overview (signed in) or the sign-in form")
async def home(request: Request[Any, Any, Any]) -> Response[Any]:
    if "authorization" not in request.headers:
        return _sign_in_form(request)
    try:
        await admin_guard(request, request.route_handler)
    except Unauthorized:
        return _sign_in_form(request)
    return await overview_page(request, admin_principal(request))


@post("/sign-in", name="admin_ui_sign_in", status_code=303)
async def sign_in(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
    email, password = data.get("email", "").strip(), data.get("password", "")
    if not email or not password or len(email) > 254 or len(password) > 1024:
        return _sign_in_form(request, error="Enter your email and password.", email=email[:254])
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    agent = request.headers.get("user-agent", "")[:256] or None
    try:
        async with platform.control.connection() as conn:
            pair = await _auth(request).login_platform(
                conn, email, password, source_address=source_address(request.scope), user_agent=agent
            )
    except InvalidCredentials:
        return _sign_in_form(request, error="Wrong email or password.", email=email)
    set_session("admin", request.scope, pair)
    return see_other(request, safe_next(data.get("next"), HOME))


@post("/sign-out", name="admin_ui_sign_out", status_code=303)
async def sign_out(request: Request[Any, Any, Any]) -> Response[Any]:
    principal = admin_principal(request)
    if principal.session_id is not None:
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        async with platform.control.connection() as conn, conn.transaction():
            await sessions.revoke(conn, "platform_sessions", uuid.UUID(str(principal.session_id)))
        _auth(request).forget_admin_sessions()
    clear_session("admin", request.scope)
    return see_other(request, HOME)


PUBLIC_HANDLERS: list[Any] = [home, sign_in]
HANDLERS: list[Any] = [sign_out]
