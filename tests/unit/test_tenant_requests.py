"""controlplane.usage.request_stats (the recorder), controlplane.usage.performance (quantile estimates) and
controlplane.metrics.tenant_requests (their ``/metrics`` families), and the HTTP middleware feeding the
recorder only for requests that resolved to a tenant, with the status actually sent. No database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, get
from litestar.connection import Request
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.testing import TestClient

from controlplane.context import TenantContext
from controlplane.http.tenant_api import RESOLVED_TENANT_KEY
from controlplane.metrics.requests import HttpMetrics, instrument
from controlplane.metrics.service import CardVaultMetrics
from controlplane.registry.models import TenantStatus, Tier
from controlplane.usage.performance import point, quantile
from controlplane.usage.request_stats import BOUNDS, TenantRequests, status_class
from tests.prometheus_support import assert_promtool_clean
from tests.unit.metrics_support import samples

ACME, GLOBEX = uuid.uuid4(), uuid.uuid4()


def test_status_classes() -> None:
    assert [status_class(s) for s in (100, 200, 204, 301, 304, 400, 404, 429, 500, 503, 600)] == [
        0,
        0,
        0,
        1,
        1,
        2,
        2,
        2,
        3,
        3,
        3,
    ]


def test_recorder_counts_classes_and_buckets_per_tenant_and_hour() -> None:
    now = [7200.0 + 10]
    recorder = TenantRequests(clock=lambda: now[0])
    recorder.observe(ACME, "acme", 200, 0.004)  # <= 5 ms
    recorder.observe(ACME, "acme", 200, 0.005)  # le is inclusive: still the first bucket
    recorder.observe(ACME, "acme", 404, 0.03)  # 50 ms bucket
    recorder.observe(ACME, "acme", 500, 9.0)  # +Inf
    recorder.observe(GLOBEX, "globex", 302, 0.2)
    now[0] = 3 * 3600.0  # the next hour
    recorder.observe(ACME, "acme", 200, 0.001)
    acme = recorder.live["acme"]
    assert acme.classes == [3, 0, 1, 1] and acme.count == 5
    assert acme.buckets == [3, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert recorder.live["globex"].classes == [0, 1, 0, 0]
    pending = recorder.pending()
    assert set(pending) == {(ACME, 7200), (GLOBEX, 7200), (ACME, 10800)}
    assert pending[(ACME, 7200)].classes == [2, 0, 1, 1]
    assert pending[(ACME, 10800)].classes == [1, 0, 0, 0]
    assert abs(pending[(ACME, 7200)].sum - 9.039) < 1e-9


def test_disabled_switch_keeps_no_live_series_but_still_persists() -> None:
    recorder = TenantRequests(per_tenant=False, clock=lambda: 0.0)
    recorder.observe(ACME, "acme", 200, 0.01)
    assert recorder.live == {}
    assert recorder.pending()[(ACME, 0)].count == 1
    recorder.publish()
    metrics = CardVaultMetrics()
    metrics.bind(requests=recorder)
    assert b"cardvault_tenant_request" not in metrics.render()


def test_quantiles_are_estimated_like_histogram_quantile() -> None:
    assert quantile(0.5, [0] * (len(BOUNDS) + 1)) is None
    buckets = [0] * (len(BOUNDS) + 1)
    buckets[0] = 10  # 10 requests <= 5 ms
    assert quantile(0.5, buckets) == 0.0025  # linear inside [0, 5 ms]
    buckets[4] = 10  # 10 more in (50 ms, 100 ms]
    assert abs((quantile(0.95, buckets) or 0) - 0.095) < 1e-9  # rank 19: 9/10 into (0.05, 0.1]
    buckets[-1] = 80  # most in +Inf: the highest finite bound
    assert quantile(0.95, buckets) == BOUNDS[-1]
    p = point(datetime(2026, 1, 1, tzinfo=UTC), [90, 0, 5, 5], buckets, 50.0)
    assert p.requests == 100 and p.error_rate == 0.05 and p.client_error_rate == 0.05 and p.mean_seconds == 0.5


def test_exposition_per_tenant_and_class() -> None:
    recorder = TenantRequests(clock=lambda: 0.0)
    recorder.observe(ACME, "acme", 200, 0.004)
    recorder.observe(ACME, "acme", 503, 0.3)
    recorder.observe(GLOBEX, "globex", 200, 0.02)
    metrics = CardVaultMetrics()
    metrics.bind(requests=recorder)
    assert b"cardvault_tenant_request" not in metrics.render()  # nothing published yet
    recorder.publish()  # as every flush does
    text = metrics.render()
    assert metrics.cached_text() is not None  # rendered once per publication
    recorder.observe(GLOBEX, "globex", 500, 0.02)
    assert metrics.render() == text  # not before the next publication
    recorder.publish()
    assert metrics.cached_text() is None
    assert samples(metrics.render(), "cardvault_tenant_requests_total")[(("class", "5xx"), ("tenant", "globex"))] == 1
    assert_promtool_clean(text)
    requests = samples(text, "cardvault_tenant_requests_total")
    assert requests[(("class", "2xx"), ("tenant", "acme"))] == 1
    assert requests[(("class", "5xx"), ("tenant", "acme"))] == 1
    assert requests[(("class", "5xx"), ("tenant", "globex"))] == 0
    assert len(requests) == 8  # 2 tenants x 4 classes
    buckets = samples(text, "cardvault_tenant_request_duration_seconds_bucket")
    assert buckets[(("le", "0.005"), ("tenant", "acme"))] == 1
    assert buckets[(("le", "0.5"), ("tenant", "acme"))] == 2
    assert buckets[(("le", "0.01"), ("tenant", "globex"))] == 0
    assert buckets[(("le", "+Inf"), ("tenant", "globex"))] == 1
    assert samples(text, "cardvault_tenant_request_duration_seconds_count")[(("tenant", "acme"),)] == 2


def test_middleware_records_only_resolved_tenants_with_the_status_sent() -> None:
    acme = TenantContext(
        id=ACME,
        slug="acme",
        status=TenantStatus.ACTIVE,
        tier=Tier.STARTER,
        server_id=uuid.uuid4(),
        database_name="d",
        role_name="r",
    )

    @get("/t/{slug:str}/thing")
    async def thing(request: Request[Any, Any, Any], slug: FromPath[str]) -> str:
        if slug == "acme":
            request.scope["state"][RESOLVED_TENANT_KEY] = acme
        if request.query_params.get("fail"):
            raise NotFoundException("no such thing")  # answered 404 by the exception handler
        return "ok"

    recorder = TenantRequests(clock=lambda: 0.0)
    app = Litestar([thing])
    instrument(app, HttpMetrics(tenants=recorder))
    with TestClient(app) as client:
        assert client.get("/t/acme/thing").status_code == 200
        assert client.get("/t/acme/thing?fail=1").status_code == 404
        assert client.get("/t/other/thing").status_code == 200  # resolved to no tenant: not counted
        assert client.get("/nowhere").status_code == 404
    assert set(recorder.live) == {"acme"}
    assert recorder.live["acme"].classes == [1, 0, 1, 0]
