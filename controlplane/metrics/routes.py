"""The operator's views of in-memory state: ``GET /metrics`` and ``GET /metrics/tenants`` (Prometheus) and
``GET /admin/pools`` (JSON).

``GET /metrics`` exposes tenant slugs and sizes, so it is not public: ``Authorization: Bearer`` with
the scrape token ``CARDVAULT_METRICS_TOKEN`` (compared in constant time, only its SHA-256 is kept) or
anything ``admin_guard`` accepts (``CARDVAULT_ADMIN_TOKEN``, a super-admin JWT). ``GET /metrics/tenants``
takes the same credentials; it serves the per-tenant families with ``CARDVAULT_METRICS_TENANT_SERIES=separate``
(a second scrape job, less often) and an empty exposition otherwise (they are in ``/metrics``, or nowhere).
``GET /admin/pools`` (behind ``admin_guard`` with the rest of ``/admin``) shows the tenant pools and the
registry cache.
"""

from __future__ import annotations

import hmac
from typing import Any

import anyio.to_thread
from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler

from controlplane.auth.service import bearer, hash_secret
from controlplane.http.admin import admin_guard
from controlplane.http.state import (
    METRICS_STATE_KEY,
    METRICS_TOKEN_HASH_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
)
from controlplane.metrics.service import CardVaultMetrics, Endpoint
from controlplane.metrics.sources import CacheSource, PoolSource
from controlplane.pools.models import PoolStats

#: The text exposition format (Litestar adds ``charset=utf-8``); every name we use is a classic one.
CONTENT_TYPE = "text/plain; version=0.0.4"


async def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The scrape token, else whatever opens ``/admin/*``; 401 without a credential."""
    token = bearer(connection.headers.get("authorization"))
    expected: bytes | None = connection.app.state.get(METRICS_TOKEN_HASH_STATE_KEY)
    if expected is not None and hmac.compare_digest(hash_secret(token), expected):
        return
    await admin_guard(connection, handler)


@get(
    "/metrics",
    guards=[metrics_guard],
    tags=["metrics"],
    summary="Prometheus metrics (scrape token or admin credential)",
    security=[{"bearer": []}],
    media_type=CONTENT_TYPE,
)
async def metrics_endpoint(state: State) -> Response[bytes]:
    metrics: CardVaultMetrics = state[METRICS_STATE_KEY]
    live = metrics.render_live()  # here, on the event loop: its sources change there
    return Response(live + await _cached_text(metrics, "metrics"), media_type=CONTENT_TYPE)


@get(
    "/metrics/tenants",
    guards=[metrics_guard],
    tags=["metrics"],
    summary="Per-tenant Prometheus metrics with CARDVAULT_METRICS_TENANT_SERIES=separate (else empty)",
    security=[{"bearer": []}],
    media_type=CONTENT_TYPE,
)
async def tenant_metrics_endpoint(state: State) -> Response[bytes]:
    metrics: CardVaultMetrics = state[METRICS_STATE_KEY]
    return Response(await _cached_text(metrics, "tenants"), media_type=CONTENT_TYPE)


async def _cached_text(metrics: CardVaultMetrics, endpoint: Endpoint) -> bytes:
    text = metrics.cached_text(endpoint)
    if text is None:  # new sources: render the (per-tenant, possibly large) text once, off the event loop
        text = await anyio.to_thread.run_sync(metrics.render_cached, endpoint)
    return text


@get("/admin/pools", tags=["metrics"], summary="Tenant pool and registry cache statistics")
async def pool_stats(state: State) -> dict[str, Any]:
    pools: PoolSource = state[TENANT_POOLS_STATE_KEY]  # the TenantPools
    cache: CacheSource = state[TENANT_CACHE_STATE_KEY]  # the TenantCache
    stats: PoolStats = pools.stats()
    lookups = stats.hits + stats.misses
    return {
        "pools": stats,
        "pool_hit_ratio": stats.hits / lookups if lookups else None,
        "registry_cache": cache.snapshot(),
    }


#: The scrape endpoints (behind ``metrics_guard``).
METRICS_HANDLERS = [metrics_endpoint, tenant_metrics_endpoint]

#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_METRICS_HANDLERS = [pool_stats]
