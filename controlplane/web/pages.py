"""Rendering a page: the template, plus what every page's layout needs.

Every page handler returns ``page(request, "admin/tenants.html", title=..., **context)`` (an htmx
partial too: its template just does not extend a layout). The layout gets:

- ``csrf_token``: for every form (``{{ csrf_field() }}`` in ``macros.html``) and htmx's header;
- ``path``: the page's path (the navigation marks the current section);
- for tenant pages, ``base`` (``/t/{slug}`` or ``""`` on the subdomain), ``slug``, ``workspaces``
  (the switcher's other workspaces) and, once signed in, ``me`` (label and role of the principal);
- for admin pages, ``admin`` (the signed-in super-admin's email) once signed in;
- ``flash``: a one-line notice passed by the handler (e.g. after an action).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.response import Redirect, Template

from controlplane.auth.models import Principal
from controlplane.http.state import BASE_DOMAIN_STATE_KEY
from controlplane.web.security import PAGE_HEADERS, csrf_key, request_csrf_token
from controlplane.web.sessions import tenant_base, workspaces

#: ``app.state`` key of the ``WebKeys`` (the keys pages sign with).
WEB_KEYS_STATE_KEY = "web_keys"


class WebKeys:
    """The keys the pages sign with, derived from ``CARDVAULT_SECRET_KEY``."""

    def __init__(self, secret_key: str) -> None:
        self.csrf = csrf_key(secret_key)
        self.workspaces = csrf_key(f"workspaces|{secret_key}")


def web_keys(request: Request[Any, Any, Any]) -> WebKeys:
    keys: WebKeys = request.app.state[WEB_KEYS_STATE_KEY]
    return keys


def common_context(request: Request[Any, Any, Any], principal: Principal | None = None) -> dict[str, Any]:
    keys = web_keys(request)
    context: dict[str, Any] = {
        "csrf_token": request_csrf_token(request, keys.csrf),
        "path": request.scope["path"],
        "flash": None,
        "flash_error": None,
    }
    if request.scope["path"].startswith("/admin/ui"):
        context["admin"] = principal.label if principal is not None else None
        return context
    base = tenant_base(request.scope)
    slug = request.path_params.get("tenant_slug") or _host_slug(request)
    context.update(
        base=base,
        slug=slug,
        workspaces=[other for other in workspaces(request.scope, keys.workspaces) if other != slug],
        me=principal,
    )
    return context


def _host_slug(request: Request[Any, Any, Any]) -> str | None:
    base_domain = request.app.state.get(BASE_DOMAIN_STATE_KEY)
    host = request.headers.get("host", "").split(":")[0].lower()
    return host.removesuffix(f".{base_domain}") if base_domain and host.endswith(f".{base_domain}") else None


def page(
    request: Request[Any, Any, Any],
    template: str,
    *,
    principal: Principal | None = None,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """The full page ``template`` with the common context (see the module docstring)."""
    return Template(
        template_name=template,
        context={**common_context(request, principal), **context},
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def see_other(request: Request[Any, Any, Any], target: str) -> Response[Any]:
    """After a successful form post: to ``target`` (htmx: by ``HX-Redirect``)."""
    if is_htmx(request):
        return Response(content=None, status_code=200, headers={**PAGE_HEADERS, "HX-Redirect": target})
    return Redirect(target, status_code=303, headers=PAGE_HEADERS)
