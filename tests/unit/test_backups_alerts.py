"""The stale-backup alert of ``ops/prometheus/alerts.yml`` fires for a stale tenant (on any replica's
series), after its ``for``, and not for the others (``promtool test rules``); the series it reads, and each
tenant's last successful backup, are what the backups' overview says."""

from __future__ import annotations

from pathlib import Path

from tests.prometheus_support import assert_alert_rules
from tests.unit.metrics_support import NOW, full_metrics, many_tenants, samples


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


def test_the_metrics_give_each_tenants_last_successful_backup_and_staleness() -> None:
    metrics, _ = full_metrics(many_tenants(3))  # tenant-00000 never backed up (stale), the others an hour ago
    text = metrics.render()
    last = samples(text, "cardvault_tenant_last_backup_timestamp_seconds")
    assert last == {(("tenant", f"tenant-{n:05d}"),): NOW.timestamp() - 3600 for n in (1, 2)}
    stale = samples(text, "cardvault_tenant_backup_stale")
    assert stale == {(("tenant", f"tenant-{n:05d}"),): float(n == 0) for n in range(3)}
    assert samples(text, "cardvault_backups_stale_tenants") == {(): 1.0}
    assert samples(text, "cardvault_backups_retained_bytes") == {(): 9.0}
