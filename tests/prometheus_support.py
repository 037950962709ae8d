"""The Prometheus tools and files the metrics tests use: ``promtool`` / ``prometheus``, the rules and the
dashboard under ``ops/``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

#: ``ops/prometheus``: the scrape configuration and the alert rules (the dashboard is ``ops/grafana``).
OPS = Path(__file__).resolve().parents[1] / "ops" / "prometheus"


#: Every documented family and its label names (the README table lists the same).
DOCUMENTED: dict[str, frozenset[str]] = {
    "cardvault_tenants": frozenset({"status", "tier"}),
    "cardvault_tenant_info": frozenset({"tenant", "tier", "status", "server"}),
    "cardvault_tenant_database_bytes": frozenset({"tenant"}),
    "cardvault_tenant_table_bytes": frozenset({"tenant", "table"}),
    "cardvault_tenant_table_rows": frozenset({"tenant", "table"}),
    "cardvault_tenant_storage_bytes": frozenset({"tenant", "kind"}),
    "cardvault_tenant_storage_files": frozenset({"tenant", "kind"}),
    "cardvault_tenant_quota_usage_ratio": frozenset({"tenant", "quota"}),
    "cardvault_quota_alerts_open": frozenset({"quota", "threshold"}),
    "cardvault_tenant_up": frozenset({"tenant"}),
    "cardvault_tenant_health_connect_seconds": frozenset({"tenant"}),
    "cardvault_tenant_health_query_seconds": frozenset({"tenant"}),
    "cardvault_tenant_health_last_check_timestamp_seconds": frozenset(),
    "cardvault_tenant_health_check_duration_seconds": frozenset(),
    "cardvault_server_info": frozenset({"server", "status"}),
    "cardvault_server_tenants": frozenset({"server"}),
    "cardvault_server_database_bytes": frozenset({"server"}),
    "cardvault_server_connections": frozenset({"server"}),
    "cardvault_server_max_connections": frozenset({"server"}),
    "cardvault_server_capacity_bytes": frozenset(),
    "cardvault_server_max_tenants": frozenset(),
    "cardvault_usage_last_collection_timestamp_seconds": frozenset(),
    "cardvault_usage_collection_duration_seconds": frozenset(),
    "cardvault_usage_collection_interval_seconds": frozenset(),
    "cardvault_usage_collection_tenants": frozenset(),
    "cardvault_usage_collection_scanned_tenants": frozenset(),
    "cardvault_usage_collection_failed_tenants": frozenset(),
    "cardvault_usage_collection_servers": frozenset(),
    "cardvault_usage_collection_failed_servers": frozenset(),
    "cardvault_pool_hits": frozenset(),
    "cardvault_pool_misses": frozenset(),
    "cardvault_pool_evictions": frozenset(),
    "cardvault_pool_invalidations": frozenset(),
    "cardvault_pool_open": frozenset(),
    "cardvault_pool_capacity": frozenset(),
    "cardvault_pool_connections": frozenset(),
    "cardvault_pool_connections_in_use": frozenset(),
    "cardvault_pool_connections_idle": frozenset(),
    "cardvault_pool_connection_budget": frozenset(),
    "cardvault_pool_requests_waiting": frozenset(),
    **{
        f"cardvault_registry_cache_{name}": frozenset()
        for name in (
            "hits",
            "negative_hits",
            "misses",
            "credential_hits",
            "credential_misses",
            "invalidations",
            "resets",
            "reconnects",
            "listening",
        )
    },
    "cardvault_registry_cache_entries": frozenset({"kind"}),
    "cardvault_job_runs": frozenset({"job"}),
    "cardvault_job_failures": frozenset({"job"}),
    "cardvault_job_failing": frozenset({"job"}),
    "cardvault_job_last_success_timestamp_seconds": frozenset({"job"}),
    "cardvault_job_last_duration_seconds": frozenset({"job"}),
    "cardvault_provisioning_duration_seconds": frozenset({"outcome"}),
    "cardvault_http_requests": frozenset({"method", "route", "status"}),
    "cardvault_http_request_duration_seconds": frozenset({"method", "route"}),
    "cardvault_tenant_requests": frozenset({"tenant", "class"}),
    "cardvault_tenant_request_duration_seconds": frozenset({"tenant"}),
    **{
        f"cardvault_storage_hygiene_{name}": frozenset()
        for name in (
            "quarantined",
            "restored",
            "deleted",
            "reclaimed_bytes",
            "missing_found",
            "missing_removed",
            "orphans",
            "missing_files",
            "quarantine_files",
            "quarantine_bytes",
            "failed_tenants",
            "last_run_timestamp_seconds",
        )
    },
    "cardvault_image_bytes_served": frozenset(),
    "cardvault_tenant_image_bytes_served": frozenset({"tenant"}),
    "cardvault_tenant_last_backup_timestamp_seconds": frozenset({"tenant"}),
    "cardvault_tenant_backup_stale": frozenset({"tenant"}),
    "cardvault_backups_stale_tenants": frozenset(),
    "cardvault_backups_retained": frozenset(),
    "cardvault_backups_retained_bytes": frozenset(),
}


def prometheus_tool(name: str) -> str:
    """Path of ``promtool`` or ``prometheus`` (Debian package ``prometheus``, which ``make test`` installs
    when it runs as root); the test fails saying what to install when it is missing."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if not found:
        pytest.fail(f"{name} not found: install Prometheus (Debian/Ubuntu: `apt-get install prometheus`)")
    return found


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=60,
    )


def assert_alert_rules(directory: Path, series: list[dict[str, str]], checks: list[dict[str, Any]]) -> None:
    """``promtool test rules`` of ``ops/prometheus/alerts.yml`` over ``series`` (one value a minute): every
    ``alert_rule_test`` entry of ``checks`` holds. Annotations are for people; promtool would compare them
    too, so the copy under test (written into ``directory``) has none."""
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (directory / "alerts.yml").write_text(yaml.safe_dump(rules))
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (directory / "alerts_test.yml").write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", "alerts_test.yml", cwd=directory)
    assert done.returncode == 0, done.stdout + done.stderr


def assert_promtool_clean(text: bytes) -> None:
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        f"promtool check metrics: rc={done.returncode}\n{done.stdout}{done.stderr}"
    )


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((OPS.parent / "grafana" / "cardvault.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
