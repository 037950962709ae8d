"""The per-tenant request alerts of ``ops/prometheus/alerts.yml`` (``promtool test rules``): a tenant whose
5xx ratio stands out (summed over replicas, with enough requests) and a tenant whose p95 latency is high
fire after their ``for``; a quiet tenant's few failures and healthy tenants do not."""

from __future__ import annotations

from pathlib import Path

from tests.prometheus_support import assert_alert_rules


def _requests(tenant: str, cls: str, per_minute: int, instance: str = "a") -> dict[str, str]:
    labels = f'tenant="{tenant}",class="{cls}",instance="{instance}"'
    return {"series": f"cardvault_tenant_requests_total{{{labels}}}", "values": f"0+{per_minute}x60"}


def _latency(tenant: str, per_le: dict[str, int]) -> list[dict[str, str]]:
    name = "cardvault_tenant_request_duration_seconds"
    series = [
        {"series": f'{name}_bucket{{tenant="{tenant}",le="{le}",instance="a"}}', "values": f"0+{n}x60"}
        for le, n in per_le.items()
    ]
    series.append({"series": f'{name}_count{{tenant="{tenant}",instance="a"}}', "values": f"0+{per_le['+Inf']}x60"})
    return series


def test_the_tenant_5xx_alert_fires_for_the_failing_tenant_only(tmp_path: Path) -> None:
    series = [
        # 10% 5xx, split over two replicas
        _requests("noisy", "2xx", 45, "a"),
        _requests("noisy", "2xx", 45, "b"),
        _requests("noisy", "5xx", 5, "a"),
        _requests("noisy", "5xx", 5, "b"),
        # a third of its requests fail, but 30 requests in 10 minutes are too few to say
        _requests("quiet", "2xx", 2),
        _requests("quiet", "5xx", 1),
        # 1% 5xx and many 4xx: client errors are not the tenant's outage
        _requests("healthy", "2xx", 100),
        _requests("healthy", "4xx", 50),
        _requests("healthy", "5xx", 1),
    ]
    expected = [{"exp_labels": {"severity": "warning", "tenant": "noisy"}}]
    assert_alert_rules(
        tmp_path,
        series,
        [
            {"eval_time": "3m", "alertname": "CardVaultTenantServerErrors", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "CardVaultTenantServerErrors", "exp_alerts": expected},
        ],
    )


def test_the_tenant_latency_alert_fires_for_the_slow_tenant_only(tmp_path: Path) -> None:
    series = [
        # 9 of 10 requests a minute take between 1 s and 2.5 s: p95 about 2.4 s
        *_latency("slow", {"0.005": 0, "1.0": 1, "2.5": 10, "+Inf": 10}),
        *_latency("fast", {"0.005": 10, "1.0": 10, "2.5": 10, "+Inf": 10}),
        # slow, but one request a minute is too few
        *_latency("idle", {"0.005": 0, "1.0": 0, "2.5": 1, "+Inf": 1}),
    ]
    expected = [{"exp_labels": {"severity": "warning", "tenant": "slow"}}]
    assert_alert_rules(
        tmp_path,
        series,
        [
            {"eval_time": "10m", "alertname": "CardVaultTenantSlow", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "CardVaultTenantSlow", "exp_alerts": expected},
        ],
    )
