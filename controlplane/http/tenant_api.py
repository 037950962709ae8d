"""The tenant API's wiring: which tenant, who is asking, may they, and their ``TenantRequest``.

Wiring (in ``create_app``): the lifespan puts the ``TenantCache``, the ``TenantPools``, the
``Authenticator``, the API call meter and the base domain into ``app.state`` (keys in
``controlplane.http.state``); the tenant API routers, mounted at both ``/t/{tenant_slug:str}/api`` and
``/api``, run ``authenticate_tenant`` before every handler (their ``before_request``). Each domain then
opens the request's ``TenantRequest`` with ``open_tenant_request`` (the ``/cards`` handlers through
``open_vault``, the account routes through their ``accounts`` dependency, others through
``tenant_request_dependencies()``); routes that need only the tenant use ``tenant_dependencies()``.

Every tenant API handler names the permission it needs in its ``opt`` (``requires(...)``); a handler
without one is refused (500; a test walks the route table so none ships).

Single-tenant mode (``CARDVAULT_MULTI_TENANT=0``): the routers are mounted at ``/api`` only (and the
tenant's logins at ``/api/auth``) behind ``pin_tenant``, which makes every request name the default
tenant as a path would; ``refuse_new_tenants`` keeps ``POST /admin/tenants`` shut (403).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Middleware, Receive, Scope, Send

from controlplane.auth.models import Permission
from controlplane.auth.ratelimit import Decision
from controlplane.auth.service import Authenticator
from controlplane.context import TenantContext, TenantRequest
from controlplane.errors import Forbidden
from controlplane.http.context import add_raw_response_headers
from controlplane.http.state import (
    API_CALLS_STATE_KEY,
    AUTH_STATE_KEY,
    BASE_DOMAIN_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_HEADER,
    TENANT_SLUG_PARAM,
)
from controlplane.http.tenant_request import GUARDED_KEY, PERMISSION_OPT, open_tenant_request
from controlplane.routing.cache import TenantCache
from controlplane.routing.resolver import resolve, resolve_slug

#: ``scope["state"]`` key of the ``TenantContext`` a tenant API request resolved to (set before the
#: credential is checked), for per-tenant request metrics (``controlplane.metrics.requests``).
RESOLVED_TENANT_KEY = "cardvault.resolved_tenant"


class CallMeter(Protocol):
    """What the middleware needs of the API call meter (``controlplane.usage.api_calls.ApiCalls``)."""

    async def admit(self, tenant_id: uuid.UUID) -> Decision | None: ...


def requires(permission: Permission) -> dict[str, Any]:
    """A route's ``opt``: the permission it needs (``@get(..., opt=requires(Permission.CARDS_READ))``)."""
    return {PERMISSION_OPT: permission}


def provide_tenant_cache(state: State) -> TenantCache:
    """The app's ``TenantCache`` (dependency ``tenant_cache``)."""
    cache: TenantCache = state[TENANT_CACHE_STATE_KEY]
    return cache


async def provide_tenant(request: Request[Any, Any, Any], tenant_cache: NamedDependency[TenantCache]) -> TenantContext:
    """The active tenant the request is for (dependency ``tenant``), or the error saying why not."""
    return await _resolve(request, tenant_cache)


async def _resolve(request: ASGIConnection[Any, Any, Any, Any], cache: TenantCache) -> TenantContext:
    path_slug = request.path_params.get(TENANT_SLUG_PARAM)
    slug = resolve_slug(
        path_slug if isinstance(path_slug, str) else None,
        request.headers.get("host"),
        request.headers.get(TENANT_HEADER),
        request.app.state.get(BASE_DOMAIN_STATE_KEY),
    )
    return await resolve(cache, slug)


def tenant_request_dependencies() -> dict[str, Provide]:
    """``tenant_request`` for the tenant API routes that work on the request as a whole (audit listing).

    Like the domains' own dependencies it is one step after ``authenticate_tenant``: take a pooled
    connection to the tenant's own database (as its own role), load the principal on it, check the
    route's permission. One dependency rather than a chain: Litestar's dependency resolution is a large
    share of a hot read's cost. The request owns the transaction: committed when the handler returns,
    rolled back when it raises (a read has none: see ``open_tenant_request``).
    """

    async def provide_tenant_request(request: Request[Any, Any, Any]) -> AsyncIterator[TenantRequest]:
        async with open_tenant_request(request) as ctx:
            yield ctx

    return {"tenant_request": Provide(provide_tenant_request)}


async def authenticate_tenant(request: Request[Any, Any, Any]) -> None:
    """Who and which tenant, before the body is read: 401 / 403 / 404 / 423 / 429 come from here.

    The ``before_request`` hook of the tenant routers. Resolves the tenant, verifies the credential in
    memory (JWT signature and claims, or an API key's shape) and that it belongs to this tenant, and counts
    the call against the hourly limit. The principal itself is loaded from the tenant's database by
    ``open_tenant_request``, on the request's own connection.

    A hook rather than a Litestar guard (Litestar copies the route handler for every guard call) or a
    router middleware (Litestar then wraps each of the router's handlers in one more exception-handling
    layer): either costs a hot request a measurable share.
    """
    scope = request.scope
    if scope["method"] != "OPTIONS":  # Litestar's preflight handler names no permission
        await _authenticate(scope)


async def _authenticate(scope: Scope) -> None:
    if scope["route_handler"].opt.get(PERMISSION_OPT) is None:  # a programming error; a test walks every route
        raise RuntimeError(f"route {scope['route_handler']} declares no permission")
    state = scope["litestar_app"].state
    host: str | None = None
    tenant_header: str | None = None
    authorization: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
        elif name == b"x-tenant":
            tenant_header = value.decode("latin-1")
    path_slug = scope["path_params"].get(TENANT_SLUG_PARAM)
    slug = resolve_slug(
        path_slug if isinstance(path_slug, str) else None, host, tenant_header, state.get(BASE_DOMAIN_STATE_KEY)
    )
    tenant = await resolve(state[TENANT_CACHE_STATE_KEY], slug)
    request_state = scope.setdefault("state", {})
    request_state[RESOLVED_TENANT_KEY] = tenant
    auth: Authenticator = state[AUTH_STATE_KEY]
    credential = await auth.credential(authorization)
    auth.check_tenant(tenant, credential)
    calls: CallMeter = state[API_CALLS_STATE_KEY]
    decision = await calls.admit(tenant.id)
    if decision is not None:
        add_raw_response_headers(scope, decision.raw_headers())
    request_state[GUARDED_KEY] = (tenant, credential)


def tenant_dependencies() -> dict[str, Provide]:
    """``tenant_cache`` and ``tenant``, for routes that need the tenant but not its database."""
    return {
        "tenant_cache": Provide(provide_tenant_cache, sync_to_thread=False),
        "tenant": Provide(provide_tenant),
    }


# -- single-tenant mode (CARDVAULT_MULTI_TENANT=0) -------------------------------------------------------


class SingleTenantMode(Forbidden):
    """Something only a multi-tenant installation does (creating tenants, signing up)."""

    code = "single_tenant_mode"


def pin_tenant(slug: str) -> Middleware:
    """Middleware of the ``/api`` routers in single-tenant mode: every request is for tenant ``slug``,
    as if its path had named it (``/t/{slug}/api``), so resolution, authentication and logins work as
    they do for a path. A Host or ``X-Tenant`` naming another tenant is still a 400 ``tenant_conflict``."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def pinned(scope: Scope, receive: Receive, send: Send) -> None:
            scope["path_params"] = {**scope.get("path_params", {}), TENANT_SLUG_PARAM: slug}
            await app(scope, receive, send)

        return pinned

    return middleware


async def refuse_new_tenants(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of ``/admin`` in single-tenant mode: ``POST /admin/tenants`` is refused (403)."""
    scope = connection.scope
    if scope["type"] == ScopeType.HTTP and scope["method"] == "POST" and scope["path"].rstrip("/") == "/admin/tenants":
        raise SingleTenantMode(
            "this installation serves one tenant (CARDVAULT_MULTI_TENANT=0); tenants cannot be created"
        )
