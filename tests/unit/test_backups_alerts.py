"""The stale-backup alert of ``ops/prometheus/alerts.yml`` fires for a stale tenant (on any replica's
series), after its ``for``, and not for the others (``promtool test rules``)."""

from __future__ import annotations

from pathlib import Path

from tests.prometheus_support import assert_alert_rules


def test_the_stale_backup_alert_fires_for_stale_tenants_only(tmp_path: Path) -> None:
    series = [
        {"series": 'cardvault_tenant_backup_stale{tenant="acme",instance="a"}', "values": "1x60"},
        {"series": 'cardvault_tenant_backup_stale{tenant="acme",instance="b"}', "values": "0x60"},
        {"series": 'cardvault_tenant_backup_stale{tenant="fresh",instance="a"}', "values": "0x60"},
        {"series": 'cardvault_tenant_backup_stale{tenant="healed",instance="a"}', "values": "1x20 0x40"},
    ]
    assert_alert_rules(
        tmp_path,
        series,
        [
            {"eval_time": "20m", "alertname": "CardVaultTenantBackupStale", "exp_alerts": []},
            {
                "eval_time": "45m",
                "alertname": "CardVaultTenantBackupStale",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "acme"}}],
            },
        ],
    )
