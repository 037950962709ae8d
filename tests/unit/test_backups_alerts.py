"""The stale-backup alert of ``ops/prometheus/alerts.yml`` fires for a stale tenant (on any replica's
series), after its ``for``, and not for the others (``promtool test rules``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.prometheus_support import OPS, promtool


def test_the_stale_backup_alert_fires_for_stale_tenants_only(tmp_path: Path) -> None:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    series = [
        {"series": 'cardvault_tenant_backup_stale{tenant="acme",instance="a"}', "values": "1x60"},
        {"series": 'cardvault_tenant_backup_stale{tenant="acme",instance="b"}', "values": "0x60"},
        {"series": 'cardvault_tenant_backup_stale{tenant="fresh",instance="a"}', "values": "0x60"},
        {"series": 'cardvault_tenant_backup_stale{tenant="healed",instance="a"}', "values": "1x20 0x40"},
    ]
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "CardVaultTenantBackupStale", "exp_alerts": []},
                    {
                        "eval_time": "45m",
                        "alertname": "CardVaultTenantBackupStale",
                        "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "acme"}}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
