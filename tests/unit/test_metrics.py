"""controlplane.metrics (service, requests, routes): the ``/metrics`` exposition, without a database.

The exposition is checked by ``promtool check metrics`` (the real Prometheus linter; the test fails,
never skips, when it cannot be had) and parsed back to check names and label sets against the
documented table (``DOCUMENTED``). Snapshots are built here as the collectors would publish them; a
1,000-tenant scrape runs with every way of reaching PostgreSQL made to fail. The HTTP middleware runs in
a small Litestar app. The shipped config, alert rules and dashboard: ``test_prometheus_files.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.metrics.requests import UNMATCHED, HttpMetrics, instrument
from controlplane.metrics.service import CardVaultMetrics
from controlplane.usage.request_stats import BOUNDS as REQUEST_BOUNDS
from tests.prometheus_support import DOCUMENTED, assert_promtool_clean
from tests.unit.metrics_support import (
    NOW,
    TABLES,
    FakeQuotas,
    families,
    full_metrics,
    many_tenants,
    samples,
    snapshot_of,
    tenant,
)

# -- the exposition ---------------------------------------------------------------------------------


def test_exposition_passes_promtool_and_has_the_documented_names_and_labels() -> None:
    metrics, _ = full_metrics(snapshot_of(tenant("acme", tier="professional"), tenant("globex")))
    text = metrics.render()
    assert_promtool_clean(text)
    found = families(text)
    assert set(found) == set(DOCUMENTED)
    for name, family in found.items():
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == DOCUMENTED[name], (name, sample.labels)


def test_render_equals_the_registry_exposition() -> None:
    """The two-part render (live + cached snapshot text) says what the registry's collect() says."""
    from prometheus_client.exposition import generate_latest

    metrics, _ = full_metrics(many_tenants(20))
    assert sorted(metrics.render().splitlines()) == sorted(generate_latest(metrics.registry).splitlines())


def test_tenant_values_and_label_is_the_slug() -> None:
    acme = tenant("acme", tier="professional", database_bytes=123_456, counters={"cards": 25_000, "users": 10})
    unlimited = tenant("initech", tier="enterprise", counters={"cards": 10**6, "users": 500, "storage_bytes": 0})
    metrics, _ = full_metrics(snapshot_of(acme, unlimited, tenant("hooli", status="suspended")))
    text = metrics.render()
    assert samples(text, "cardvault_tenant_database_bytes")[(("tenant", "acme"),)] == 123_456
    ratios = samples(text, "cardvault_tenant_quota_usage_ratio")
    assert ratios[(("quota", "cards"), ("tenant", "acme"))] == 0.5  # professional: 50,000 cards
    assert ratios[(("quota", "users"), ("tenant", "acme"))] == 1.0  # professional: 10 users
    # enterprise: users and cards unlimited (no ratio), storage limited (ratio 0)
    assert {q for (q, t) in ratios if t == ("tenant", "initech")} == {("quota", "storage_bytes")}
    tenants = samples(text, "cardvault_tenants")
    assert tenants[(("status", "active"), ("tier", "professional"))] == 1
    assert tenants[(("status", "suspended"), ("tier", "starter"))] == 1
    assert tenants[(("status", "deleting"), ("tier", "enterprise"))] == 0  # every combination, always
    assert len(tenants) == 15  # 5 statuses x 3 tiers
    rows = samples(text, "cardvault_tenant_table_rows")
    assert rows[(("table", "cards"), ("tenant", "acme"))] == 10
    assert samples(text, "cardvault_usage_last_collection_timestamp_seconds")[()] == NOW.timestamp() + 1.5


def test_quota_ratios_use_the_effective_limits_and_follow_their_refresh() -> None:
    acme = tenant("acme", tier="starter", counters={"cards": 900, "users": 1})
    quotas = FakeQuotas()
    quotas.open_counts[("cards", 80)] = 1
    metrics = CardVaultMetrics()
    snapshot = snapshot_of(acme)
    metrics.bind(snapshot=lambda: snapshot, quotas=quotas)
    text = metrics.render()
    ratio = (("quota", "cards"), ("tenant", "acme"))
    assert samples(text, "cardvault_tenant_quota_usage_ratio")[ratio] == 0.9  # not loaded yet: the tier's 1,000
    assert samples(text, "cardvault_quota_alerts_open")[(("quota", "cards"), ("threshold", "80"))] == 1
    # QuotaAlerts refreshed: an override (or expansion) to 3,000 cards, users unlimited. Same snapshot.
    quotas.limits = {acme.tenant_id: {"cards": 3000, "users": None, "storage_bytes": 1024}}
    assert metrics.cached_text() is None
    ratios = samples(metrics.render(), "cardvault_tenant_quota_usage_ratio")
    assert ratios == {ratio: 0.3}  # users unlimited: no ratio; no storage counter: no ratio
    assert metrics.cached_text() is not None


def test_unanalysed_tables_have_no_row_series() -> None:
    metrics, _ = full_metrics(snapshot_of(tenant("acme", row_estimate=-1)))
    text = metrics.render()
    assert not samples(text, "cardvault_tenant_table_rows")
    assert len(samples(text, "cardvault_tenant_table_bytes")) == len(TABLES)


def test_per_table_series_can_be_turned_off() -> None:
    snapshot = many_tenants(10)
    on, _ = full_metrics(snapshot, per_table=True)
    off, _ = full_metrics(snapshot, per_table=False)
    assert len(samples(on.render(), "cardvault_tenant_table_bytes")) == 10 * len(TABLES)
    text = off.render()
    assert_promtool_clean(text)
    assert not {"cardvault_tenant_table_bytes", "cardvault_tenant_table_rows"} & set(families(text))
    assert len(samples(text, "cardvault_tenant_database_bytes")) == 10


def test_before_any_collection_only_live_families() -> None:
    metrics, _ = full_metrics(None)
    text = metrics.render()
    assert_promtool_clean(text)
    names = set(families(text))
    assert "cardvault_pool_open" in names and "cardvault_http_requests" in names
    assert not {n for n in names if n.startswith(("cardvault_tenant", "cardvault_server_"))}
    assert "cardvault_usage_last_collection_timestamp_seconds" not in names


def test_unbound_metrics_render_without_any_source() -> None:
    text = CardVaultMetrics().render()
    assert_promtool_clean(text)
    assert set(families(text)) == {"cardvault_provisioning_duration_seconds"}


def test_jobs() -> None:
    metrics, _ = full_metrics(None)
    text = metrics.render()
    assert samples(text, "cardvault_job_failing") == {(("job", "reconcile"),): 0, (("job", "usage"),): 1}
    assert samples(text, "cardvault_job_runs_total")[(("job", "reconcile"),)] == 3
    assert samples(text, "cardvault_job_failures_total")[(("job", "usage"),)] == 1
    # never succeeded: no timestamp rather than a misleading 0
    assert samples(text, "cardvault_job_last_success_timestamp_seconds") == {(("job", "reconcile"),): 1.7e9}


# -- where the per-tenant series go (CARDVAULT_METRICS_TENANT_SERIES) ----------------------------------


def tenant_labelled(text: bytes) -> set[str]:
    """Names of the series in ``text`` that carry a ``tenant`` label."""
    return {s.name for f in text_string_to_metric_families(text.decode()) for s in f.samples if "tenant" in s.labels}


def series_keys(text: bytes) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }


def test_separate_keeps_metrics_free_of_tenant_series_whatever_the_tenant_count() -> None:
    small, _ = full_metrics(many_tenants(10), tenant_series="separate")
    large, _ = full_metrics(many_tenants(1000), tenant_series="separate")
    small_text, large_text = small.render(), large.render()
    assert_promtool_clean(large_text)
    assert tenant_labelled(small_text) == tenant_labelled(large_text) == set()
    # The same series (only values differ: tenants by status and tier, the fleet's totals), so the same size
    # but for the digits of those counts.
    assert series_keys(small_text) == series_keys(large_text)
    assert len(large_text) - len(small_text) < 200, (len(small_text), len(large_text))
    tenants = samples(large_text, "cardvault_tenants")
    assert sum(tenants.values()) == 1000 and len(tenants) == 15
    assert samples(large_text, "cardvault_image_bytes_served_total")[()] == 1000 * 2048
    assert samples(large_text, "cardvault_backups_stale_tenants")[()] == 1
    assert "cardvault_server_tenants" in families(large_text)
    assert "cardvault_usage_collection_tenants" in families(large_text)


def test_separate_serves_the_per_tenant_series_at_their_own_endpoint() -> None:
    snapshot = many_tenants(20)
    inline, _ = full_metrics(snapshot)
    separate, _ = full_metrics(snapshot, tenant_series="separate")
    assert inline.render_tenants() == b""  # inline: everything is in /metrics
    tenants_text = separate.render_tenants()
    assert_promtool_clean(tenants_text)
    assert len(samples(tenants_text, "cardvault_tenant_database_bytes")) == 20
    assert len(samples(tenants_text, "cardvault_tenant_up")) == 20
    assert len(samples(tenants_text, "cardvault_tenant_table_bytes")) == 20 * len(TABLES)
    assert len(samples(tenants_text, "cardvault_tenant_requests_total")) == 20 * 4
    assert len(samples(tenants_text, "cardvault_tenant_image_bytes_served_total")) == 20
    assert len(samples(tenants_text, "cardvault_tenant_backup_stale")) == 20
    # Every series of /metrics/tenants is labelled by tenant, and the two endpoints together have exactly
    # the series /metrics has inline, each once.
    assert all("tenant" in dict(labels) for _, labels in series_keys(tenants_text))
    main = series_keys(separate.render())
    assert not main & series_keys(tenants_text)
    assert main | series_keys(tenants_text) == series_keys(inline.render())


def test_separate_keeps_per_table_working_in_the_tenant_endpoint() -> None:
    metrics, _ = full_metrics(many_tenants(5), per_table=False, tenant_series="separate")
    text = metrics.render_tenants()
    assert not {"cardvault_tenant_table_bytes", "cardvault_tenant_table_rows"} & set(families(text))
    assert not samples(text, "cardvault_tenant_requests_total")  # the recorder publishes none then
    assert not samples(text, "cardvault_tenant_image_bytes_served_total")
    assert len(samples(text, "cardvault_tenant_database_bytes")) == 5


def test_off_exposes_no_per_tenant_series_anywhere() -> None:
    metrics, _ = full_metrics(many_tenants(50), tenant_series="off")
    text = metrics.render()
    assert_promtool_clean(text)
    assert tenant_labelled(text) == set()
    assert metrics.render_tenants() == b""
    assert not [s for f in metrics.collect() for s in f.samples if "tenant" in s.labels]  # the registry too
    assert sum(samples(text, "cardvault_tenants").values()) == 50
    assert samples(text, "cardvault_tenant_health_last_check_timestamp_seconds")  # an aggregate: kept


def test_the_tenant_endpoint_text_is_cached_per_change_of_its_sources() -> None:
    current = [many_tenants(3)]
    metrics = CardVaultMetrics(tenant_series="separate")
    metrics.bind(snapshot=lambda: current[0])
    assert metrics.cached_text("tenants") is None
    first = metrics.render_tenants()
    assert metrics.cached_text("tenants") == first
    assert metrics.cached_text("metrics") is not None  # rendered together: one build per change
    current[0] = many_tenants(5)
    assert metrics.cached_text("tenants") is None and metrics.cached_text("metrics") is None
    assert len(samples(metrics.render_tenants(), "cardvault_tenant_database_bytes")) == 5


def test_an_unknown_tenant_series_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="tenant_series"):
        CardVaultMetrics(tenant_series="sometimes")  # type: ignore[arg-type]


# -- scrape cost ------------------------------------------------------------------------------------


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way of reaching PostgreSQL (or anything else over a socket) fails loudly."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a scrape tried to connect to something")

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(refuse))
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_database")
def test_scrape_of_1000_tenants_makes_no_database_call_and_renders_the_snapshot_once() -> None:
    snapshot = many_tenants(1000)
    metrics, _ = full_metrics(snapshot)
    assert metrics.cached_text() is None
    first = metrics.render()
    cached = metrics.cached_text()
    assert cached is not None and cached in first  # a repeat scrape reuses this text
    second = metrics.render()
    assert first == second
    assert len(samples(first, "cardvault_tenant_database_bytes")) == 1000
    assert sum(samples(first, "cardvault_tenant_up").values()) == 999
    # Series per tenant are a fixed number whatever the tenant count: info, size, 2 per table,
    # storage bytes and files per kind, its limited quotas, up + 2 health latencies, its last backup
    # and whether it is stale, and its image bytes served; its requests by class (4) and their latency
    # histogram (buckets, sum and count).
    per_tenant = 1 + 1 + 2 * len(TABLES) + 2 + 3 + 3 + 2 + 1 + 4 + (len(REQUEST_BOUNDS) + 1) + 2
    tenant_series = sum(len(f.samples) for name, f in families(first).items() if name.startswith("cardvault_tenant_"))
    assert tenant_series <= 1000 * per_tenant


@pytest.mark.usefixtures("no_database")
def test_a_new_snapshot_is_rendered_anew() -> None:
    current = [many_tenants(3)]
    metrics = CardVaultMetrics()
    metrics.bind(snapshot=lambda: current[0])
    assert len(samples(metrics.render(), "cardvault_tenant_database_bytes")) == 3
    current[0] = many_tenants(5)
    assert len(samples(metrics.render(), "cardvault_tenant_database_bytes")) == 5


# -- HTTP metrics -----------------------------------------------------------------------------------


@get("/t/{tenant_slug:str}/api/cards/{card_id:int}", sync_to_thread=False)
def _card(tenant_slug: FromPath[str], card_id: FromPath[int]) -> dict[str, int]:
    return {"id": card_id}


@get("/boom", sync_to_thread=False)
def _boom() -> None:
    raise RuntimeError("boom")


@pytest.fixture
def instrumented() -> Iterator[tuple[TestClient[Litestar], HttpMetrics]]:
    app = Litestar(route_handlers=[_card, _boom], debug=False)
    http = HttpMetrics()
    instrument(app, http)
    with TestClient(app=app) as client:
        yield client, http


def test_http_requests_are_labelled_by_route_template_never_the_raw_path(
    instrumented: tuple[TestClient[Litestar], HttpMetrics],
) -> None:
    client, http = instrumented
    for slug in ("acme", "globex"):
        for card in range(5):
            assert client.get(f"/t/{slug}/api/cards/{card}").status_code == 200
    for i in range(20):
        assert client.get(f"/scanner/probe-{i}").status_code == 404
    assert client.post("/t/acme/api/cards/1").status_code == 405
    assert client.request("BREW", "/t/acme/api/cards/1").status_code in (400, 404, 405)
    assert client.get("/boom").status_code == 500
    metrics = CardVaultMetrics()
    metrics.register(http)
    text = metrics.render()
    assert_promtool_clean(text)
    requests = samples(text, "cardvault_http_requests_total")
    template = "/t/{tenant_slug}/api/cards/{card_id}"
    assert requests[(("method", "GET"), ("route", template), ("status", "200"))] == 10
    assert requests[(("method", "GET"), ("route", UNMATCHED), ("status", "404"))] == 20
    assert requests[(("method", "POST"), ("route", UNMATCHED), ("status", "405"))] == 1
    assert requests[(("method", "GET"), ("route", "/boom"), ("status", "500"))] == 1
    assert {dict(k)["method"] for k in requests} == {"GET", "POST", "OTHER"}
    assert {dict(k)["route"] for k in requests} == {template, UNMATCHED, "/boom"}
    counts = samples(text, "cardvault_http_request_duration_seconds_count")
    assert counts[(("method", "GET"), ("route", template))] == 10
    inf = samples(text, "cardvault_http_request_duration_seconds_bucket")
    assert inf[(("le", "+Inf"), ("method", "GET"), ("route", template))] == 10


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    http = HttpMetrics(buckets=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        http.observe("GET", "/x", 200, seconds)
    metrics = CardVaultMetrics()
    metrics.register(http)
    text = metrics.render()
    buckets = samples(text, "cardvault_http_request_duration_seconds_bucket")
    by_le = {dict(k)["le"]: v for k, v in buckets.items()}
    assert by_le == {"0.1": 2, "1.0": 4, "+Inf": 5}
    assert samples(text, "cardvault_http_request_duration_seconds_sum")[(("method", "GET"), ("route", "/x"))] == 4.65
