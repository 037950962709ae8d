"""Mounting the pages: the admin dashboard at ``/admin/ui``, the tenant app at ``/t/{slug}`` and at ``/``
(a tenant's subdomain, or the one tenant of single-tenant mode), the workspace finder at ``/workspaces``
and the static files at ``/static``.

Each area has a public router (sign-in forms and the like) and a signed-in one:

- admin: ``admin_guard`` decides, on the credential ``session_middleware`` took from the cookies;
- tenant: ``authenticate_tenant`` and ``open_tenant_request`` decide, as for the tenant API: every
  tenant page names the permission it needs (``opt=requires(...)``) and gets a ``tenant_request``.

Every page router refuses a cross-site or token-less unsafe request (``security.check_csrf``), answers
errors as pages (``errors``) and stays out of the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import BeforeRequestHookHandler, Middleware

from controlplane.http.admin import admin_guard
from controlplane.http.state import TENANT_SLUG_PARAM
from controlplane.http.tenant_api import (
    authenticate_tenant,
    pin_tenant,
    tenant_dependencies,
    tenant_request_dependencies,
)
from controlplane.settings import Settings
from controlplane.web import admin, tenant
from controlplane.web.errors import PAGE_EXCEPTION_HANDLERS
from controlplane.web.pages import web_keys
from controlplane.web.security import PAGE_HEADERS, check_csrf
from controlplane.web.sessions import ADMIN_UI_PATH, session_middleware
from controlplane.web.templating import STATIC_DIR, STATIC_PATH


async def _csrf(request: Request[Any, Any, Any]) -> None:
    await check_csrf(request, web_keys(request).csrf)


async def _tenant_page(request: Request[Any, Any, Any]) -> None:
    """A signed-in tenant page: who and which tenant, as for the tenant API, then the CSRF check."""
    await authenticate_tenant(request)
    await _csrf(request)


async def _static_headers(response: Response[Any]) -> Response[Any]:
    response.headers.update({k: v for k, v in PAGE_HEADERS.items() if k != "Cache-Control"})
    return response


def _router(
    path: str,
    handlers: list[Any],
    middleware: list[Middleware],
    before: BeforeRequestHookHandler = _csrf,
    **options: Any,
) -> Router:
    return Router(
        path,
        route_handlers=handlers,
        middleware=middleware,
        before_request=before,
        exception_handlers=PAGE_EXCEPTION_HANDLERS,
        include_in_schema=False,
        **options,
    )


def web_routers(settings: Settings) -> list[Router]:
    """Every page router (``create_app`` mounts them)."""
    admin_session = session_middleware("admin")
    tenant_session = session_middleware("tenant")
    routers = [
        _router(ADMIN_UI_PATH, admin.PUBLIC_HANDLERS, [admin_session]),
        _router(ADMIN_UI_PATH, admin.PAGE_HANDLERS, [admin_session], guards=[admin_guard]),
        create_static_files_router(
            STATIC_PATH,
            directories=[STATIC_DIR],
            include_in_schema=False,
            # URLs carry the content hash (``templating.static``): cached for a year.
            cache_control=CacheControlHeader(public=True, max_age=31_536_000, immutable=True),
            after_request=_static_headers,
        ),
    ]
    if settings.multi_tenant:
        routers.append(_router("/", tenant.FINDER_HANDLERS, [tenant_session]))
        mounts: list[tuple[str, list[Middleware]]] = [(f"/t/{{{TENANT_SLUG_PARAM}:str}}", []), ("/", [])]
    else:
        mounts = [("/", [pin_tenant(settings.default_tenant)])]
    for path, pinned in mounts:
        routers.append(
            _router(path, tenant.PUBLIC_HANDLERS, [*pinned, tenant_session], dependencies=tenant_dependencies())
        )
        routers.append(
            _router(
                path,
                tenant.PAGE_HANDLERS,
                [*pinned, tenant_session],
                _tenant_page,
                dependencies=tenant_request_dependencies(),
            )
        )
    return routers
