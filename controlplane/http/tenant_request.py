"""A tenant API request's ``TenantRequest``: its tenant's connection, the principal loaded on it, the route's
permission checked; committed or rolled back when the request is done.

``open_tenant_request`` is what every tenant-data dependency is built on (``vault``, ``accounts``,
``tenant_request``). Its context managers are classes rather than ``@asynccontextmanager`` generators:
they run in every tenant request, and each generator layer cost a hot read a few microseconds to enter
and leave (README "Routing").
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from litestar import Request
from litestar.types import Scope

from controlplane.auth.models import Permission, Principal
from controlplane.auth.service import Authenticator
from controlplane.context import AuditContext, TenantContext, TenantRequest
from controlplane.db import AsyncConn
from controlplane.errors import PermissionDenied, ServerUnavailable, TenantUnavailable
from controlplane.http.context import add_response_headers, request_id, source_address
from controlplane.http.replica_routing import LSN_HEADER, committed_lsn, min_lsn, peer_closed, replica_reads
from controlplane.http.state import AUTH_STATE_KEY, TENANT_CACHE_STATE_KEY, TENANT_POOLS_STATE_KEY
from controlplane.pools.service import TenantPools
from controlplane.routing.cache import TenantCache
from controlplane.routing.replica_reads import ReplicaReads, ReplicaRoute
from controlplane.routing.resolver import admit

#: ``opt`` key naming the permission a tenant route needs.
PERMISSION_OPT = "permission"
#: ``scope["state"]`` key of the (tenant, credential) that ``authenticate_tenant`` let through.
GUARDED_KEY = "cardvault.tenant_credential"
#: Methods whose tenant requests run in autocommit (see ``open_tenant_request``).
READ_METHODS = frozenset({"GET", "HEAD"})


def open_tenant_request(request: Request[Any, Any, Any]) -> TenantRequestScope:
    """The ``TenantRequest`` of a tenant API request that passed ``authenticate_tenant``
    (``async with open_tenant_request(request) as ctx``).

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
    return TenantRequestScope(request)


class TenantRequestScope:
    """``open_tenant_request``: the replica or the primary, and what their failures mean."""

    __slots__ = ("_request", "_route", "_serve", "_stamp", "_tenant")

    def __init__(self, request: Request[Any, Any, Any]) -> None:
        self._request = request
        self._tenant: TenantContext = request.scope["state"][GUARDED_KEY][0]
        self._route: tuple[ReplicaReads, ReplicaRoute] | None = None  # serving from a replica
        self._stamp = False  # a write to a tenant with replicas: answer its LSN

    async def __aenter__(self) -> TenantRequest:
        request, tenant = self._request, self._tenant
        method = request.scope["method"]
        reads = replica_reads(request)
        if reads is not None and method in READ_METHODS and reads.has_replicas(tenant):
            route = reads.route(tenant, min_lsn(request))
            if route is not None:
                serve = _Serve(request, route.key, autocommit=True, replica=True)
                try:
                    ctx = await serve.__aenter__()
                except Exception as exc:
                    # The principal could not be loaded there: an API key's last_used_at (a write), or a
                    # login, key or permission change not replayed yet. The primary has the last word.
                    _note_replica_failure(reads, route, exc)
                else:
                    reads.served(route)
                    self._serve, self._route = serve, (reads, route)
                    return ctx
        self._stamp = reads is not None and method not in READ_METHODS and reads.has_replicas(tenant)
        self._serve = _Serve(request, tenant.id, autocommit=method in READ_METHODS)
        try:
            return await self._serve.__aenter__()
        except TenantUnavailable:  # no connection
            await self._recheck()
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._route is not None:  # the handler ran on the replica (or failed there): nothing can be retried
            try:
                await self._serve.__aexit__(exc_type, exc, tb)
            except Exception as failure:
                _note_replica_failure(*self._route, failure)
                raise
            if isinstance(exc, Exception):
                _note_replica_failure(*self._route, exc)
            return
        try:
            if exc_type is None and self._stamp:
                lsn = await self._serve.run(committed_lsn)
                add_response_headers(self._request.scope, {LSN_HEADER: lsn})
            await self._serve.__aexit__(exc_type, exc, tb)
        except TenantUnavailable:  # the connection was lost under the request
            await self._recheck()
            raise
        if isinstance(exc, TenantUnavailable):
            await self._recheck()

    async def _recheck(self) -> None:
        """Raise what the registry says now if the tenant may no longer be served as ``tenant`` says.

        Another replica's suspend, delete or rename locks the tenant's role out (or moves its slug) before
        this replica's cache has heard of it: a request in that window gets 423, 410 or 404, not 503.
        Only failed requests pay for it (one registry read).
        """
        cache: TenantCache = self._request.app.state[TENANT_CACHE_STATE_KEY]
        try:
            current = await cache.current(self._tenant.id)
        except ServerUnavailable:
            return  # the registry cannot be asked either: the 503 stands
        admit(current, self._tenant.slug)


def _note_replica_failure(reads: ReplicaReads, route: ReplicaRoute, exc: BaseException) -> None:
    if isinstance(exc, (TenantUnavailable, psycopg.OperationalError)):
        reads.failed(route, str(exc).strip() or type(exc).__name__)


class _Serve:
    """A connection from the pool ``pool_key`` (the tenant's, or one of its replica pools), the principal
    loaded on it and its permission checked.

    A replica connection the server has closed (the replica stopped or restarted) is found out here,
    before the handler runs (``peer_closed``: no round trip), so that the read can still go to the
    primary rather than fail on its first statement.
    """

    __slots__ = ("_conn", "_lease", "_replica", "_request")

    def __init__(
        self, request: Request[Any, Any, Any], pool_key: uuid.UUID, *, autocommit: bool, replica: bool = False
    ) -> None:
        self._request = request
        self._replica = replica
        pools: TenantPools = request.app.state[TENANT_POOLS_STATE_KEY]
        self._lease = pools.connection(pool_key, autocommit=autocommit)

    async def __aenter__(self) -> TenantRequest:
        request = self._request
        scope = request.scope
        tenant, credential = scope["state"][GUARDED_KEY]
        conn = self._conn = await self._lease.__aenter__()
        try:
            if self._replica and peer_closed(conn):
                await conn.close()
                raise psycopg.OperationalError("the replica closed the connection")
            auth: Authenticator = request.app.state[AUTH_STATE_KEY]
            principal = await auth.tenant_principal(conn, tenant, credential)
            permission: Permission = request.route_handler.opt[PERMISSION_OPT]
            if not principal.can(permission):
                raise PermissionDenied(
                    f"this needs the {permission.value} permission, which this {principal.kind.value} lacks",
                    permission=permission.value,
                )
        except BaseException as exc:
            await self._lease.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return TenantRequest(
            conn=conn, tenant=tenant, principal=principal, audit=lambda: _audit_context(principal, scope)
        )

    async def run(self, step: Callable[[AsyncConn], Awaitable[str]]) -> str:
        """``await step(conn)`` inside the lease: if it raises, the lease ends with its error."""
        try:
            result = await step(self._conn)
        except BaseException as exc:
            await self._lease.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return result

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self._lease.__aexit__(exc_type, exc, tb)


def _audit_context(principal: Principal, scope: Scope) -> AuditContext:
    return AuditContext(
        actor=principal.subject,
        actor_label=principal.label,
        impersonator=f"admin:{principal.impersonator}" if principal.impersonator else None,
        source_address=source_address(scope),
        request_id=request_id(scope),
    )
