"""HTTP request metrics by route template.

``HttpMetrics`` counts every request by method, **route template** and status and times it
(``cardvault_http_requests_total``, ``cardvault_http_request_duration_seconds``). The label is the
template Litestar matched (``/t/{tenant_slug}/api/cards/{card_id}``), never the raw path, and
``unmatched`` for a request no route took (404/405), so a scanner cannot grow the series; methods
outside the standard ones become ``OTHER``. ``instrument(app, ...)`` wraps the application's ASGI handler
(outside the router, so unmatched requests and errors are seen too). The hot path costs two
``perf_counter`` calls, one small closure for the status, one dict lookup and three integer/float
updates: no locks (everything runs on the event loop) and no prometheus_client child lookups.

With ``tenants`` (a ``TenantRequests``), a request that resolved to a tenant (``authenticate_tenant``
leaves its ``TenantContext`` under ``RESOLVED_TENANT_KEY`` in ``scope["state"]``) is also counted for that
tenant, with the status actually sent (exception handlers included).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from controlplane.context import TenantContext
from controlplane.http.tenant_api import RESOLVED_TENANT_KEY
from controlplane.metrics.service import DurationHistogram
from controlplane.usage.request_stats import TenantRequests

#: Route label of requests that matched no route.
UNMATCHED = "unmatched"
#: Methods kept as their own label value; any other is ``OTHER``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Latency buckets: a routed tenant request takes about a millisecond, image uploads and admin
#: requests up to seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Route:
    """Counts by status and the latency histogram of one (method, route template)."""

    __slots__ = ("latency", "statuses")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.latency = DurationHistogram(bounds)
        self.statuses: dict[int, int] = {}


class HttpMetrics:
    """Request counters and latency histograms by method and route template; a Prometheus collector."""

    def __init__(self, buckets: Sequence[float] = BUCKETS, *, tenants: TenantRequests | None = None) -> None:
        self._bounds = tuple(buckets)
        self._routes: dict[tuple[str, str], _Route] = {}
        #: Per-tenant statistics of the requests that resolved to a tenant (``RESOLVED_TENANT_KEY``).
        self.tenants = tenants

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "OTHER"
        stats = self._routes.get((method, route))
        if stats is None:
            stats = self._routes[(method, route)] = _Route(self._bounds)
        stats.latency.observe(seconds)
        statuses = stats.statuses
        statuses[status] = statuses.get(status, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """The families, read on the event loop (where ``observe`` runs), so no lock is needed."""
        requests = CounterMetricFamily(
            "cardvault_http_requests_total",
            "HTTP requests by method, route template and status",
            labels=("method", "route", "status"),
        )
        durations = HistogramMetricFamily(
            "cardvault_http_request_duration_seconds",
            "Seconds from request to last response byte, by method and route template",
            labels=("method", "route"),
        )
        for (method, route), stats in sorted(self._routes.items()):
            for status, count in sorted(stats.statuses.items()):
                requests.add_metric((method, route, str(status)), count)
            stats.latency.add_to(durations, (method, route))
        yield requests
        yield durations

    def middleware(self, app: ASGIApp, on_start: OnStart | None = None) -> ASGIApp:
        """``app`` wrapped so that every HTTP request through it is counted and timed (and ``on_start``
        sees each response's start message before it is sent)."""
        return _Middleware(app, self, on_start or _leave)


#: What ``instrument`` may run on every ``http.response.start`` message (and its scope) before it is sent.
OnStart = Callable[[Message, Scope], None]


def _leave(message: Message, scope: Scope) -> None:
    pass


class _Middleware:
    __slots__ = ("app", "metrics", "on_start")

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, on_start: OnStart) -> None:
        self.app = app
        self.metrics = metrics
        self.on_start = on_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        status = 500  # the app raised or the client left before a response started
        on_start = self.on_start

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                on_start(message, scope)
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router leaves the matched template in the scope; no template: nothing matched.
            route = scope.get("path_template") or UNMATCHED
            seconds = time.perf_counter() - started
            self.metrics.observe(scope["method"], route, status, seconds)
            tenants = self.metrics.tenants
            if tenants is not None:
                tenant: TenantContext | None = scope.get("state", {}).get(RESOLVED_TENANT_KEY)
                if tenant is not None:  # the final status: after the exception handlers, as sent
                    tenants.observe(tenant.id, tenant.slug, status, seconds)


def instrument(app: Litestar, metrics: HttpMetrics, on_start: OnStart | None = None) -> None:
    """Count and time every HTTP request of ``app``, including those no route matches, and run ``on_start``
    on every response's start message (the service's own response headers: ``http.context.stamp_headers``).

    Litestar's ``middleware=`` runs after routing, so it never sees a 404 or 405; this wraps the
    handler the application calls for every request instead (routing happens inside it and leaves
    ``path_template`` in the scope). The headers ride on the same wrapper of ``send`` rather than a
    Litestar ``before_send`` hook, which wraps ``send`` once more for every request.
    """
    app.asgi_handler = metrics.middleware(app.asgi_handler, on_start)
