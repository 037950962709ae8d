"""Settings.from_env and parse_duration: defaults, every variable, and refused values."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from controlplane.errors import ConfigError
from controlplane.localpg.binaries import BINDIR_ENV
from controlplane.settings import ProvisioningSettings, Settings, UsageSettings, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("30s", 30.0), ("250ms", 0.25), ("15m", 900.0), ("1.5h", 5400.0), ("7d", 604800.0),
     (" 5 s ", 5.0), ("0", 0.0)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1s", "5w", "1e3", "s", "1 2s", "5S", "10 minutes"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


def test_no_variables_give_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    defaults = Settings.from_env({})
    assert defaults.database.url == ""
    assert defaults.provisioning.delete_grace == 7 * 86400
    assert defaults.provisioning.clone_strategy == "wal_log"
    assert defaults.failpoints == ""
    assert (defaults.provisioning.tenant_schema_dir / "env.py").is_file()
    assert (defaults.provisioning.registry_schema_dir / "env.py").is_file()


def test_blank_variables_count_as_unset() -> None:
    env = {"CARDVAULT_DATABASE_URL": "  ", "CARDVAULT_PORT": "", "CARDVAULT_DELETE_GRACE": " "}
    assert Settings.from_env(env) == Settings()


def test_every_variable_is_read() -> None:
    env = {
        "CARDVAULT_DATA_DIR": "/srv/cv",
        "CARDVAULT_LOG_LEVEL": "debug",
        "CARDVAULT_FAILPOINTS": "after:activate=raise",
        "CARDVAULT_DATABASE_URL": "host=db dbname=cardvault",
        "CARDVAULT_CONNECT_TIMEOUT": "2s",
        "CARDVAULT_STATEMENT_TIMEOUT": "2m",
        "CARDVAULT_CONTROL_POOL_SIZE": "7",
        "CARDVAULT_TEMPLATE_DATABASE": "tpl",
        "CARDVAULT_CLONE_STRATEGY": "FILE_COPY",
        "CARDVAULT_DELETE_GRACE": "0",
        "CARDVAULT_MIGRATION_CONCURRENCY": "9",
        "CARDVAULT_RECONCILE_INTERVAL": "500ms",
        "CARDVAULT_MAX_ATTEMPTS": "5",
        "CARDVAULT_TENANT_SCHEMA_DIR": "/x/tenant",
        "CARDVAULT_REGISTRY_SCHEMA_DIR": "/x/registry",
        "CARDVAULT_HOST": "0.0.0.0",
        "CARDVAULT_PORT": "9000",
        "CARDVAULT_SECRET_KEY": "s" * 40,
        "CARDVAULT_ADMIN_TOKEN": "token",
    }
    s = Settings.from_env(env)
    assert (s.data_dir, s.log_level, s.failpoints) == (Path("/srv/cv"), "DEBUG", "after:activate=raise")
    assert (s.database.url, s.database.connect_timeout, s.database.statement_timeout) == (
        "host=db dbname=cardvault",
        2.0,
        120.0,
    )
    assert s.database.control_pool_size == 7
    p = s.provisioning
    assert (p.template_database, p.clone_strategy, p.delete_grace) == ("tpl", "file_copy", 0.0)
    assert (p.migration_concurrency, p.reconcile_interval, p.max_attempts) == (9, 0.5, 5)
    assert (p.tenant_schema_dir, p.registry_schema_dir) == (Path("/x/tenant"), Path("/x/registry"))
    assert (s.http.host, s.http.port) == ("0.0.0.0", 9000)
    assert (s.security.secret_key, s.security.admin_token) == ("s" * 40, "token")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "http", "must be an integer"),
        ("PORT", "0", "must be >= 1"),
        ("CONTROL_POOL_SIZE", "1", "must be >= 2"),
        ("MIGRATION_CONCURRENCY", "0", "must be >= 1"),
        ("MAX_ATTEMPTS", "0", "must be >= 1"),
        ("MAX_ATTEMPTS", "2.5", "must be an integer"),
        ("CLONE_STRATEGY", "rsync", "wal_log or file_copy"),
        ("DELETE_GRACE", "a week", "not a duration"),
        ("CONNECT_TIMEOUT", "-5", "not a duration"),
    ],
)
def test_bad_values_are_a_config_error_naming_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env({f"CARDVAULT_{name}": value})
    assert caught.value.status == 500
    if "duration" not in message:
        assert f"CARDVAULT_{name}" in caught.value.detail


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"DATABASE_URL": "x", "PORT": "1", "cardvault_port": "2"}) == Settings()


def test_from_env_without_a_mapping_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARDVAULT_TEMPLATE_DATABASE", "from_os_environ")
    assert Settings.from_env().provisioning.template_database == "from_os_environ"


def test_settings_are_immutable_and_replace_makes_a_copy() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.failpoints = "x"  # type: ignore[misc]
    changed = settings.replace(failpoints="before:template=raise")
    assert changed.failpoints == "before:template=raise" and settings.failpoints == ""
    assert changed.provisioning is settings.provisioning
    assert dataclasses.replace(settings.provisioning, delete_grace=0) != ProvisioningSettings()


def test_usage_defaults() -> None:
    usage = Settings.from_env({}).usage
    assert usage == UsageSettings()
    assert (usage.interval, usage.concurrency, usage.rescan_after) == (300.0, 4, 3600.0)
    assert (usage.raw_retention, usage.hourly_retention, usage.daily_retention) == (7 * 86400, 90 * 86400, 400 * 86400)
    assert usage.compact_interval == 86400
    assert (usage.health_interval, usage.metrics_per_table, usage.metrics_tenant_series) == (300.0, True, "inline")


def test_every_usage_variable_is_read() -> None:
    env = {
        "CARDVAULT_USAGE_INTERVAL": "1m",
        "CARDVAULT_USAGE_CONCURRENCY": "8",
        "CARDVAULT_USAGE_RESCAN_AFTER": "0",
        "CARDVAULT_USAGE_RAW_RETENTION": "2d",
        "CARDVAULT_USAGE_HOURLY_RETENTION": "30d",
        "CARDVAULT_USAGE_DAILY_RETENTION": "365d",
        "CARDVAULT_USAGE_COMPACT_INTERVAL": "6h",
        "CARDVAULT_HEALTH_INTERVAL": "2m",
        "CARDVAULT_METRICS_PER_TABLE": "off",
        "CARDVAULT_METRICS_TENANT_SERIES": " Separate ",
    }
    assert Settings.from_env(env).usage == UsageSettings(
        interval=60.0,
        concurrency=8,
        rescan_after=0.0,
        raw_retention=2 * 86400.0,
        hourly_retention=30 * 86400.0,
        daily_retention=365 * 86400.0,
        compact_interval=6 * 3600.0,
        health_interval=120.0,
        metrics_per_table=False,
        metrics_tenant_series="separate",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CARDVAULT_USAGE_CONCURRENCY": "0"}, "CARDVAULT_USAGE_CONCURRENCY must be >= 1"),
        ({"CARDVAULT_USAGE_INTERVAL": "often"}, "not a duration"),
        ({"CARDVAULT_USAGE_RAW_RETENTION": "100d"}, "must grow"),
        ({"CARDVAULT_USAGE_HOURLY_RETENTION": "500d"}, "must grow"),
        ({"CARDVAULT_METRICS_TENANT_SERIES": "elsewhere"}, "must be inline, separate or off"),
    ],
)
def test_bad_usage_values_are_a_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_readme_documents_every_variable() -> None:
    """Every ``CARDVAULT_*`` name ``Settings.from_env`` reads (and the local cluster's binaries) is in the
    README's configuration table."""
    root = Path(__file__).resolve().parents[2]
    source = (root / "controlplane" / "settings" / "__init__.py").read_text()
    names = {f"CARDVAULT_{n}" for n in re.findall(r'get[a-z_]*\(\s*"([A-Z0-9_]+)"', source)} | {BINDIR_ENV}
    assert len(names) > 40  # the pattern still finds the reads
    readme = (root / "README.md").read_text()
    assert sorted(n for n in names if f"`{n}`" not in readme) == []
