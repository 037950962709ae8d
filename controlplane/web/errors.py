"""How pages answer errors: signed out (401) goes to the sign-in form, with the page to come back to;
everything else is an HTML page with the status and the same plain detail the API would give. Like the
API, nothing expected is ever a 500, and an unexpected error shows no internals."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Redirect
from litestar.types import ExceptionHandlersMap

from controlplane.errors import CardVaultError
from controlplane.routing.errors import TenantRequired
from controlplane.web.pages import page
from controlplane.web.security import PAGE_HEADERS
from controlplane.web.sessions import ADMIN_UI_PATH, tenant_base

log = logging.getLogger(__name__)

_TITLES = {
    400: "That did not work",
    401: "Please sign in",
    403: "Not allowed",
    404: "Not found",
    409: "That cannot be done now",
    410: "Gone",
    413: "Too large",
    423: "Locked",
    429: "Slow down",
    503: "Temporarily unavailable",
}


def safe_next(target: str | None, default: str) -> str:
    """A same-site path to return to after signing in (anything else: ``default``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def error_page(request: Request[Any, Any, Any], status: int, detail: str, code: str) -> Response[Any]:
    if request.headers.get("hx-request"):  # htmx swaps the body of the error into its target
        headers = {**PAGE_HEADERS, "HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
        return Response(
            content=f'<p class="flash flash-error" role="alert">{_escape(detail)}</p>',
            status_code=status,
            media_type=MediaType.HTML,
            headers=headers,
        )
    admin = request.scope["path"].startswith(ADMIN_UI_PATH)
    home = f"{ADMIN_UI_PATH}/" if admin else f"{tenant_base(request.scope)}/"
    return page(
        request,
        "error.html",
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        code=code,
        home=home,
        status_code=status,
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _sign_in_redirect(request: Request[Any, Any, Any]) -> Response[Any]:
    admin = request.scope["path"].startswith(ADMIN_UI_PATH)
    form = f"{ADMIN_UI_PATH}/" if admin else f"{tenant_base(request.scope)}/sign-in"
    back = request.scope["path"] if request.method == "GET" else None
    target = f"{form}?next={quote(back, safe='/')}" if back and back != form else form
    if request.headers.get("hx-request"):
        return Response(content=None, status_code=200, headers={**PAGE_HEADERS, "HX-Redirect": target})
    return Redirect(target, status_code=303, headers=PAGE_HEADERS)


def page_domain_error(request: Request[Any, Any, Any], exc: CardVaultError) -> Response[Any]:
    if exc.status == 401:
        return _sign_in_redirect(request)
    if isinstance(exc, TenantRequired):
        return Redirect("/workspaces", status_code=303, headers=PAGE_HEADERS)
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.detail)
    return error_page(request, exc.status, exc.detail, exc.code)


def page_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException) or status == 400:
        return error_page(request, 400, "some of the values sent are not valid", "validation_failed")
    if status == 401:
        return _sign_in_redirect(request)
    return error_page(request, status, str(exc.detail), "http_error" if status < 500 else "internal_error")


def page_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on page %s %s", request.method, request.url.path, exc_info=exc)
    return error_page(request, 500, "something went wrong on our side; it has been logged", "internal_error")


PAGE_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CardVaultError: page_domain_error,
    HTTPException: page_http_error,
    Exception: page_unexpected_error,
}
