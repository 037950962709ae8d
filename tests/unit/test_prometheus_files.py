"""The shipped Prometheus files under ``ops/``: the config and alert rules pass promtool, the rules fire when
they should (``promtool test rules``), and the Grafana dashboard imports and uses documented metrics only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from tests.prometheus_support import DOCUMENTED, OPS, assert_alert_rules, dashboard_expressions, promtool


def test_alert_rules_pass_promtool() -> None:
    done = promtool("check", "rules", str(OPS / "alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # Deployed, the scrape token file sits next to the config (it is a secret: not in the repository).
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(OPS / name, tmp_path / name)
    (tmp_path / "cardvault_metrics_token").write_text("a-scrape-token\n")
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"cardvault", "cardvault_tenants"}
    assert jobs["cardvault"]["metrics_path"] == "/metrics"
    # Per-tenant series (CARDVAULT_METRICS_TENANT_SERIES=separate): less often, but within the 5 min
    # lookback of a query, so the alerts' `for:` clauses hold between scrapes.
    tenants = jobs["cardvault_tenants"]
    assert tenants["metrics_path"] == "/metrics/tenants"
    assert 60 <= _seconds(tenants["scrape_interval"]) <= 150
    for job in jobs.values():
        assert job["authorization"]["credentials_file"] == "cardvault_metrics_token"
        assert job["static_configs"] == jobs["cardvault"]["static_configs"]


def _seconds(duration: str) -> int:
    value, unit = int(duration[:-1]), duration[-1]
    return value * {"s": 1, "m": 60}[unit]


def test_per_tenant_alerts_fire_on_series_scraped_every_2_minutes_by_their_own_job(tmp_path: Path) -> None:
    """With CARDVAULT_METRICS_TENANT_SERIES=separate the per-tenant series come from the ``cardvault_tenants``
    job, one sample every 2 minutes (``_`` is a minute without a sample): the rules find them by name and
    their ``for:`` clauses still complete."""
    every_2m = {"job": "cardvault_tenants", "instance": "a"}

    def labels(**extra: str) -> str:
        return "{" + ",".join(f'{k}="{v}"' for k, v in (every_2m | extra).items()) + "}"

    series = [
        {"series": f"cardvault_tenant_up{labels(tenant='broken')}", "values": "0 _ " * 20},
        {"series": f"cardvault_tenant_up{labels(tenant='acme')}", "values": "1 _ " * 20},
        {"series": f"cardvault_tenant_quota_usage_ratio{labels(tenant='full', quota='cards')}", "values": "1 _ " * 20},
        {"series": f"cardvault_tenant_backup_stale{labels(tenant='old')}", "values": "1 _ " * 25},
        {
            "series": f"cardvault_tenant_requests_total{labels(tenant='acme', **{'class': '5xx'})}",
            "values": " ".join(f"{100 * i} _" for i in range(20)),  # a third of the requests: 5xx
        },
        {
            "series": f"cardvault_tenant_requests_total{labels(tenant='acme', **{'class': '2xx'})}",
            "values": " ".join(f"{200 * i} _" for i in range(20)),
        },
    ]
    assert_alert_rules(
        tmp_path,
        series,
        [
            {
                "eval_time": "15m",
                "alertname": "CardVaultTenantDown",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "broken"}}],
            },
            {
                "eval_time": "10m",
                "alertname": "CardVaultTenantQuotaExhausted",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "full", "quota": "cards"}}],
            },
            {
                "eval_time": "45m",
                "alertname": "CardVaultTenantBackupStale",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "old"}}],
            },
            {
                "eval_time": "30m",
                "alertname": "CardVaultTenantServerErrors",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "acme"}}],
            },
        ],
    )


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    """``promtool test rules`` on synthetic series: quotas at 0.85 and 1.0 (a full users quota, a single-seat
    plan's normal state, is only info), a stale collector, a failing
    job, connections near max_connections, pool budget, acquire timeouts."""
    series = [
        {"series": 'cardvault_tenant_quota_usage_ratio{tenant="acme",quota="cards",instance="a"}', "values": "0.85x40"},
        {"series": 'cardvault_tenant_quota_usage_ratio{tenant="acme",quota="cards",instance="b"}', "values": "0.85x40"},
        {"series": 'cardvault_tenant_quota_usage_ratio{tenant="acme",quota="users",instance="a"}', "values": "1x40"},
        {"series": 'cardvault_tenant_quota_usage_ratio{tenant="calm",quota="cards",instance="a"}', "values": "0.5x40"},
        {"series": 'cardvault_tenant_quota_usage_ratio{tenant="full",quota="cards",instance="a"}', "values": "1x40"},
        # the last collection finished at t=0, every 60 s expected: stale after 180 s (+5 min for)
        {"series": 'cardvault_usage_last_collection_timestamp_seconds{job="cardvault",instance="a"}', "values": "0x40"},
        {"series": 'cardvault_usage_collection_interval_seconds{job="cardvault",instance="a"}', "values": "60x40"},
        {"series": 'cardvault_job_failing{job="reconcile",instance="a"}', "values": "1x40"},
        {"series": 'cardvault_tenant_up{tenant="acme",instance="a"}', "values": "1x40"},
        {"series": 'cardvault_tenant_up{tenant="broken",instance="a"}', "values": "0x40"},
        {"series": 'cardvault_job_failing{job="flush_api_calls",instance="a"}', "values": "0x40"},
        {"series": 'cardvault_server_connections{server="db1",instance="a"}', "values": "90x40"},
        {"series": 'cardvault_server_max_connections{server="db1",instance="a"}', "values": "100x40"},
        {"series": 'cardvault_pool_connections{instance="a"}', "values": "195x40"},
        {"series": 'cardvault_pool_connection_budget{instance="a"}', "values": "200x40"},
        {
            "series": 'cardvault_http_requests_total{instance="a",method="GET",'
            'route="/t/{tenant_slug}/api/cards/{card_id}",status="503"}',
            "values": "0+10x40",
        },
    ]
    ratio = {"severity": "info", "tenant": "acme", "quota": "cards"}
    assert_alert_rules(
        tmp_path,
        series,
        [
            {
                "eval_time": "20m",
                "alertname": "CardVaultTenantQuotaNearLimit",
                "exp_alerts": [
                    {"exp_labels": ratio},
                    {"exp_labels": {**ratio, "quota": "users"}},
                ],
            },
            {
                "eval_time": "20m",
                "alertname": "CardVaultTenantQuotaExhausted",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "full", "quota": "cards"}}],
            },
            {"eval_time": "5m", "alertname": "CardVaultTenantDown", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "CardVaultTenantDown",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "tenant": "broken"}}],
            },
            {"eval_time": "3m", "alertname": "CardVaultUsageCollectionStale", "exp_alerts": []},
            {
                "eval_time": "10m",
                "alertname": "CardVaultUsageCollectionStale",
                "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
            },
            {
                "eval_time": "15m",
                "alertname": "CardVaultJobFailing",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "reconcile"}}],
            },
            {
                "eval_time": "15m",
                "alertname": "CardVaultServerConnectionsHigh",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "server": "db1"}}],
            },
            {
                "eval_time": "15m",
                "alertname": "CardVaultPoolConnectionsNearBudget",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "a"}}],
            },
            {
                "eval_time": "15m",
                "alertname": "CardVaultPoolAcquireTimeouts",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "a"}}],
            },
        ],
    )


def _family_of(name: str) -> str:
    """The family a series name belongs to (counters are parsed without ``_total``)."""
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix) and name.removesuffix(suffix) in DOCUMENTED:
            return name.removesuffix(suffix)
    return name


def test_dashboard_is_importable_json_on_the_datasource_variable() -> None:
    dashboard = json.loads((OPS.parent / "grafana" / "cardvault.json").read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dashboard["templating"]["list"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
            assert p["targets"], p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])


def test_dashboard_and_alerts_use_only_documented_metrics() -> None:
    alerts = yaml.safe_load((OPS / "alerts.yml").read_text())
    expressions = [*dashboard_expressions(), *(r["expr"] for g in alerts["groups"] for r in g["rules"])]
    used = {_family_of(m) for expr in expressions for m in re.findall(r"\bcardvault_[a-z_]+", expr)}
    assert used - set(DOCUMENTED) == set()
    # the panels the brief asks for
    for needed in (
        "cardvault_tenants",
        "cardvault_tenant_database_bytes",
        "cardvault_tenant_quota_usage_ratio",
        "cardvault_pool_connections",
        "cardvault_job_failing",
        "cardvault_http_requests",
        "cardvault_http_request_duration_seconds",
    ):
        assert needed in used
