"""The tenant API's wiring: which tenant, who is asking, may they, and their ``TenantRequest``.

Wiring (in ``create_app``): the lifespan puts the ``TenantCache``, the ``TenantPools``, the
``Authenticator``, the API call meter and the base domain into ``app.state`` (keys in
``controlplane.http.state``); the tenant API routers, mounted at both ``/t/{tenant_slug:str}/api`` and
``/api``, get ``tenant_auth_middleware`` and ``tenant_request_dependencies()`` plus each domain's own
one-step dependency built on ``open_tenant_request`` (``vault`` for the CardVault routes, ``accounts``
for the account routes); other routes that need only the tenant use ``tenant_dependencies()``.

Every tenant API handler names the permission it needs in its ``opt`` (``requires(...)``); a handler
without one is refused (500; a test walks the route table so none ships).

Single-tenant mode (``CARDVAULT_MULTI_TENANT=0``): the routers are mounted at ``/api`` only (and the
tenant's logins at ``/api/auth``) behind ``pin_tenant``, which makes every request name the default
tenant as a path would; ``refuse_new_tenants`` keeps ``POST /admin/tenants`` shut (403).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Middleware, Receive, Scope, Send

from controlplane.auth.models import Permission, Principal
from controlplane.auth.ratelimit import Decision
from controlplane.auth.service import Authenticator
from controlplane.context import AuditContext, TenantContext, TenantRequest
from controlplane.errors import Forbidden, PermissionDenied, ServerUnavailable, TenantUnavailable
from controlplane.http.context import add_response_headers, request_id, source_address
from controlplane.http.replica_routing import LSN_HEADER, committed_lsn, min_lsn, peer_closed, replica_reads
from controlplane.http.state import (
    API_CALLS_STATE_KEY,
    AUTH_STATE_KEY,
    BASE_DOMAIN_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_HEADER,
    TENANT_POOLS_STATE_KEY,
    TENANT_SLUG_PARAM,
)
from controlplane.pools.service import TenantPools
from controlplane.routing.cache import TenantCache
from controlplane.routing.resolver import admit, resolve, resolve_slug

#: ``opt`` key naming the permission a tenant route needs.
PERMISSION_OPT = "permission"
_GUARDED_KEY = "cardvault.tenant_credential"
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

    Like the domains' own dependencies it is one step after ``tenant_auth_middleware``: take a pooled
    connection to the tenant's own database (as its own role), load the principal on it, check the
    route's permission. One dependency rather than a chain: Litestar's dependency resolution is a large
    share of a hot read's cost. The request owns the transaction: committed when the handler returns,
    rolled back when it raises (a read has none: see ``open_tenant_request``).
    """

    async def provide_tenant_request(request: Request[Any, Any, Any]) -> AsyncIterator[TenantRequest]:
        async with open_tenant_request(request) as ctx:
            yield ctx

    return {"tenant_request": Provide(provide_tenant_request)}


def tenant_auth_middleware(app: ASGIApp) -> ASGIApp:
    """Who and which tenant, before the body is read: 401 / 403 / 404 / 423 / 429 come from here.

    Resolves the tenant, verifies the credential in memory (JWT signature and claims, or an API key's
    shape) and that it belongs to this tenant, and counts the call against the hourly limit. The
    principal itself is loaded from the tenant's database by ``open_tenant_request``, on the request's
    own connection.

    A middleware of the tenant routers rather than a Litestar guard: Litestar copies the route handler
    for every guard call, a measurable share of a hot request.
    """

    async def authenticate(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] != "OPTIONS":  # OPTIONS: Litestar's preflight
            await _authenticate(scope)
        await app(scope, receive, send)

    return authenticate


async def _authenticate(scope: Scope) -> None:
    if scope["route_handler"].opt.get(PERMISSION_OPT) is None:  # a programming error; a test walks every route
        raise RuntimeError(f"route {scope['route_handler']} declares no permission")
    state = scope["litestar_app"].state
    headers = {k: v for k, v in scope["headers"] if k in _AUTH_HEADERS}
    path_slug = scope["path_params"].get(TENANT_SLUG_PARAM)
    slug = resolve_slug(
        path_slug if isinstance(path_slug, str) else None,
        _text(headers.get(b"host")),
        _text(headers.get(b"x-tenant")),
        state.get(BASE_DOMAIN_STATE_KEY),
    )
    tenant = await resolve(state[TENANT_CACHE_STATE_KEY], slug)
    scope.setdefault("state", {})[RESOLVED_TENANT_KEY] = tenant
    auth: Authenticator = state[AUTH_STATE_KEY]
    credential = await auth.credential(_text(headers.get(b"authorization")))
    auth.check_tenant(tenant, credential)
    calls: CallMeter = state[API_CALLS_STATE_KEY]
    decision = await calls.admit(tenant.id)
    if decision is not None:
        add_response_headers(scope, decision.headers())
    scope.setdefault("state", {})[_GUARDED_KEY] = (tenant, credential)


_AUTH_HEADERS = frozenset({b"host", b"x-tenant", b"authorization"})


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def _audit_context(principal: Principal, scope: Scope) -> AuditContext:
    return AuditContext(
        actor=principal.subject,
        actor_label=principal.label,
        impersonator=f"admin:{principal.impersonator}" if principal.impersonator else None,
        source_address=source_address(scope),
        request_id=request_id(scope),
    )


@asynccontextmanager
async def open_tenant_request(request: Request[Any, Any, Any]) -> AsyncIterator[TenantRequest]:
    """The ``TenantRequest`` of a tenant API request that passed ``tenant_auth_middleware``.

    Its connection is a pooled one to the tenant's own database. The principal is loaded on it and must
    hold the route's permission. Requests that change something run in one transaction (committed when
    the block exits, rolled back when it raises). Reads (``READ_METHODS``) run in autocommit: no BEGIN
    and COMMIT round trips, two of a one-query read's three. They lose nothing by it: under READ
    COMMITTED every statement takes its own snapshot inside a transaction too, and a read holds no
    locks to keep. So a ``GET`` handler must not write anything that must be atomic with something else.

    Reads of routers that opt in may be served by a read replica (``http.replica_routing``); a handler
    of such a router must not write at all on a ``GET``. Loading the principal may: an API key's
    ``last_used_at``, which fails on a replica. Such a request, like any whose principal cannot be
    loaded on the replica (a login or key not replayed there yet) or whose replica fails before the
    handler runs, is served by the primary instead.
    """
    tenant = request.scope["state"][_GUARDED_KEY][0]
    method = request.scope["method"]
    reads = replica_reads(request)
    if reads is not None and method in READ_METHODS and reads.has_replicas(tenant):
        route = reads.route(tenant, min_lsn(request))
        if route is not None:
            started = False
            try:
                async with _serve(request, route.key, autocommit=True, replica=True) as ctx:
                    started = True
                    reads.served(route)
                    yield ctx
                return
            except Exception as exc:
                if isinstance(exc, (TenantUnavailable, psycopg.OperationalError)):
                    reads.failed(route, str(exc).strip() or type(exc).__name__)
                if started:
                    raise  # the handler ran on the replica (or failed there): nothing can be retried
                # Else the principal could not be loaded there: an API key's last_used_at (a write), or a
                # login, key or permission change not replayed yet. The primary has the last word.
    stamp = reads is not None and method not in READ_METHODS and reads.has_replicas(tenant)
    try:
        async with _serve(request, tenant.id, autocommit=method in READ_METHODS) as ctx:
            yield ctx
            if stamp:
                add_response_headers(request.scope, {LSN_HEADER: await committed_lsn(ctx.conn)})
    except TenantUnavailable:  # no connection, or it was lost under the request
        await _recheck(request.app.state[TENANT_CACHE_STATE_KEY], tenant)
        raise


@asynccontextmanager
async def _serve(
    request: Request[Any, Any, Any], pool_key: uuid.UUID, *, autocommit: bool, replica: bool = False
) -> AsyncIterator[TenantRequest]:
    """A connection from the pool ``pool_key`` (the tenant's, or one of its replica pools), the principal
    loaded on it and its permission checked.

    A replica connection the server has closed (the replica stopped or restarted) is found out here,
    before the handler runs (``peer_closed``: no round trip), so that the read can still go to the
    primary rather than fail on its first statement.
    """
    tenant, credential = request.scope["state"][_GUARDED_KEY]
    permission: Permission = request.route_handler.opt[PERMISSION_OPT]
    state = request.app.state
    auth: Authenticator = state[AUTH_STATE_KEY]
    pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
    async with pools.connection(pool_key, autocommit=autocommit) as conn:
        if replica and peer_closed(conn):
            await conn.close()
            raise psycopg.OperationalError("the replica closed the connection")
        principal = await auth.tenant_principal(conn, tenant, credential)
        if not principal.can(permission):
            raise PermissionDenied(
                f"this needs the {permission.value} permission, which this {principal.kind.value} lacks",
                permission=permission.value,
            )
        scope = request.scope
        yield TenantRequest(
            conn=conn, tenant=tenant, principal=principal, audit=lambda: _audit_context(principal, scope)
        )


#: Methods whose tenant requests run in autocommit (see ``open_tenant_request``).
READ_METHODS = frozenset({"GET", "HEAD"})


async def _recheck(cache: TenantCache, tenant: TenantContext) -> None:
    """Raise what the registry says now if the tenant may no longer be served as ``tenant`` says.

    Another replica's suspend, delete or rename locks the tenant's role out (or moves its slug) before
    this replica's cache has heard of it: a request in that window gets 423, 410 or 404, not 503.
    Only failed requests pay for it (one registry read).
    """
    try:
        current = await cache.current(tenant.id)
    except ServerUnavailable:
        return  # the registry cannot be asked either: the 503 stands
    admit(current, tenant.slug)


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
