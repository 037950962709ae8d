"""The server-fill alerts of ``ops/prometheus/alerts.yml`` (``promtool test rules``): a server whose tenant
databases grow toward ``cardvault_server_capacity_bytes`` within 14 days fires ``CardVaultServerProjectedFull``
after its hour, a flat one does not (nor any while the capacity is unset); a server at
``cardvault_server_max_tenants`` fires ``CardVaultServerTenantsAtLimit``."""

from __future__ import annotations

from pathlib import Path

from tests.prometheus_support import assert_alert_rules

GIB = 1024**3


def test_a_server_growing_toward_its_capacity_alerts_and_a_flat_one_does_not(tmp_path: Path) -> None:
    per_minute = GIB // 60  # 1 GiB an hour: 336 GiB in 14 days
    series = [
        {
            "series": 'cardvault_server_database_bytes{server="grow",instance="a"}',
            "values": f"{10 * GIB}+{per_minute}x240",
        },
        {"series": 'cardvault_server_database_bytes{server="flat",instance="a"}', "values": f"{50 * GIB}x240"},
        {"series": 'cardvault_server_database_bytes{server="flat",instance="b"}', "values": f"{50 * GIB}x240"},
        {"series": 'cardvault_server_capacity_bytes{instance="a"}', "values": f"{100 * GIB}x240"},
        {"series": 'cardvault_server_tenants{server="grow",instance="a"}', "values": "10x240"},
        {"series": 'cardvault_server_tenants{server="flat",instance="a"}', "values": "3x240"},
        {"series": 'cardvault_server_max_tenants{instance="a"}', "values": "10x240"},
    ]
    fired = [{"exp_labels": {"severity": "warning", "server": "grow"}}]
    assert_alert_rules(
        tmp_path,
        series,
        [
            {"eval_time": "30m", "alertname": "CardVaultServerProjectedFull", "exp_alerts": []},
            {"eval_time": "3h", "alertname": "CardVaultServerProjectedFull", "exp_alerts": fired},
            {"eval_time": "3h", "alertname": "CardVaultServerTenantsAtLimit", "exp_alerts": fired},
        ],
    )


def test_no_projected_full_alert_without_a_capacity(tmp_path: Path) -> None:
    series = [
        {"series": 'cardvault_server_database_bytes{server="grow",instance="a"}', "values": f"{10 * GIB}+{GIB}x240"},
    ]
    assert_alert_rules(
        tmp_path, series, [{"eval_time": "3h", "alertname": "CardVaultServerProjectedFull", "exp_alerts": []}]
    )
