"""Per-tenant request statistics end to end: tenant API requests of two tenants are counted per tenant
slug and status class in ``/metrics`` (errors from exception handlers and the auth middleware included,
unknown tenants never), flushed to ``tenant_request_stats`` and served by
``GET /admin/tenants/{slug}/performance``; one tenant's errors never show under the other."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.http.state import TENANT_REQUESTS_STATE_KEY
from controlplane.platform import Platform
from controlplane.usage.request_stats import TenantRequests
from tests.integration.auth_support import create_tenant

Client = AsyncTestClient[Any]


def tenant_samples(text: str, name: str) -> dict[tuple[str, str], float]:
    """``{(tenant, class or le): value}`` of one sample name."""
    return {
        (s.labels["tenant"], s.labels.get("class") or s.labels.get("le") or ""): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name
    }


async def test_requests_are_counted_flushed_and_reported_per_tenant(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    globex = await create_tenant(client, "globex")
    for _ in range(3):
        assert (await client.get(acme.api("/cards"), headers=acme.auth)).status_code == 200
    for _ in range(2):  # 404 from the exception handler
        assert (await client.get(acme.api("/cards/999999"), headers=acme.auth)).status_code == 404
    assert (await client.get(globex.api("/cards"), headers=globex.auth)).status_code == 200
    # Refused by the auth middleware: counted under the tenant addressed (globex), not the token's.
    assert (await client.get(globex.api("/cards"), headers=acme.auth)).status_code in (401, 403)
    assert (await client.get(globex.api("/cards"), headers={"Authorization": ""})).status_code == 401
    # Resolved to no tenant: not counted at all (no series for a scanner to grow).
    assert (await client.get("/t/nobody/api/cards", headers=acme.auth)).status_code == 404

    recorder: TenantRequests = client.app.state[TENANT_REQUESTS_STATE_KEY]
    async with platform.control.connection() as conn:
        assert await recorder.flush(conn) >= 2  # one tenant-hour each (two if an hour just began)
        assert await recorder.flush(conn) == 0  # nothing counted twice

    text = (await client.get("/metrics")).text  # as published by the flush
    requests = tenant_samples(text, "cardvault_tenant_requests_total")
    assert {t for t, _ in requests} == {"acme", "globex"}
    assert [requests[("acme", c)] for c in ("2xx", "3xx", "4xx", "5xx")] == [3, 0, 2, 0]
    assert [requests[("globex", c)] for c in ("2xx", "3xx", "4xx", "5xx")] == [1, 0, 2, 0]
    counts = tenant_samples(text, "cardvault_tenant_request_duration_seconds_count")
    assert counts == {("acme", ""): 5, ("globex", ""): 3}
    assert tenant_samples(text, "cardvault_tenant_request_duration_seconds_bucket")[("acme", "+Inf")] == 5

    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT t.slug, sum(s.requests_2xx) AS requests_2xx, sum(s.requests_4xx) AS requests_4xx,"
            " sum(s.requests_5xx) AS requests_5xx, sum(cardinality(s.duration_buckets)) AS buckets,"
            " sum((SELECT sum(b) FROM unnest(s.duration_buckets) b)) AS observed"
            " FROM tenant_request_stats s JOIN tenants t ON t.id = s.tenant_id GROUP BY t.slug ORDER BY t.slug"
        )
        rows = await cur.fetchall()
    assert [(r["slug"], r["requests_2xx"], r["requests_4xx"], r["requests_5xx"]) for r in rows] == [
        ("acme", 3, 2, 0),
        ("globex", 1, 2, 0),
    ]
    assert rows[0]["observed"] == 5 and rows[0]["buckets"] % 10 == 0  # 9 bounds + Inf per row

    # A second flush of the same hour adds to the row.
    assert (await client.get(acme.api("/cards/999999"), headers=acme.auth)).status_code == 404
    async with platform.control.connection() as conn:
        assert await recorder.flush(conn) >= 1

    view = await client.get("/admin/tenants/acme/performance?hours=3")
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["slug"] == "acme" and body["hours"] == 3 and len(body["points"]) == 3
    total = body["total"]  # the whole window (the requests may straddle an hour)
    assert total["requests"] == 6 and total["by_class"] == {"2xx": 3, "3xx": 0, "4xx": 3, "5xx": 0}
    assert total["error_rate"] == 0 and total["client_error_rate"] == 0.5
    assert 0 < total["p50_seconds"] <= total["p95_seconds"] <= body["bucket_bounds"][-1]
    assert sum(p["requests"] for p in body["points"]) == 6 and body["points"][-1]["requests"] >= 1
    assert body["points"][0]["requests"] == 0 and body["points"][0]["p95_seconds"] is None
    other = (await client.get("/admin/tenants/globex/performance")).json()
    assert len(other["points"]) == 48 and other["total"]["by_class"] == {"2xx": 1, "3xx": 0, "4xx": 2, "5xx": 0}

    unknown = await client.get("/admin/tenants/nobody/performance")
    assert unknown.status_code == 404 and unknown.json()["error"] == "tenant_not_found"
    assert (await client.get("/admin/tenants/acme/performance?hours=0")).status_code == 400
    # Admin only: a tenant's own admin is refused.
    refused = await client.get("/admin/tenants/acme/performance", headers=acme.auth)
    assert refused.status_code in (401, 403)
