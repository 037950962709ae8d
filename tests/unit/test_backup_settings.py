"""The settings of issue 13 read from the environment: backup schedules per tier (defaults and
``CARDVAULT_BACKUP_SCHEDULE``), the local backup directory and the store it chooses, the privacy and
hygiene durations, and single-tenant mode (``CARDVAULT_MULTI_TENANT=false``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.errors import ConfigError
from controlplane.objectstore.factory import store_for
from controlplane.objectstore.local import LocalObjectStore
from controlplane.settings import BackupSchedule, PrivacySettings, Settings

DAY = 86400.0


def test_the_default_schedules_are_the_tiers_of_the_issue() -> None:
    backups = Settings.from_env({}).backups
    assert backups.schedules == {
        "starter": BackupSchedule(DAY, 7 * DAY),
        "professional": BackupSchedule(DAY, 30 * DAY),
        "enterprise": BackupSchedule(6 * 3600.0, 90 * DAY),
    }


def test_a_schedule_setting_replaces_the_tiers_it_names_only() -> None:
    env = {"CARDVAULT_BACKUP_SCHEDULE": " Starter=12h/3d , enterprise=1h/14d "}
    schedules = Settings.from_env(env).backups.schedules
    assert schedules["starter"] == BackupSchedule(12 * 3600.0, 3 * DAY)
    assert schedules["enterprise"] == BackupSchedule(3600.0, 14 * DAY)
    assert schedules["professional"] == BackupSchedule(DAY, 30 * DAY)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("gold=1d/7d", "is not tier=interval/retention"),
        ("starter=1d", "is not tier=interval/retention"),
        ("starter=/7d", "is not tier=interval/retention"),
        ("starter=0/7d", "needs an interval > 0"),
        ("starter=7d/1d", "retention >= interval"),
        ("starter=daily/7d", "not a duration"),
    ],
)
def test_a_bad_schedule_is_refused(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"CARDVAULT_BACKUP_SCHEDULE": value})


def test_the_backup_directory_is_the_local_store(tmp_path: Path) -> None:
    default = Settings.from_env({"CARDVAULT_DATA_DIR": str(tmp_path / "data")})
    assert default.backup_dir == tmp_path / "data" / "backups" and not default.backups.uses_s3
    chosen = Settings.from_env({"CARDVAULT_BACKUP_DIR": str(tmp_path / "elsewhere")})
    store = store_for(chosen)
    assert isinstance(store, LocalObjectStore) and store.root == tmp_path / "elsewhere"


def test_privacy_and_hygiene_durations_are_read() -> None:
    env = {
        "CARDVAULT_EXPORT_TTL": "2h",
        "CARDVAULT_AUDIT_RETENTION": "90d",
        "CARDVAULT_HYGIENE_INTERVAL": "6h",
        "CARDVAULT_QUARANTINE_GRACE": "3d",
    }
    assert Settings.from_env(env).privacy == PrivacySettings(
        export_ttl=7200.0, audit_retention=90 * DAY, hygiene_interval=6 * 3600.0, quarantine_grace=3 * DAY
    )
    assert Settings.from_env({"CARDVAULT_AUDIT_RETENTION": "0"}).privacy.audit_retention == 0.0


@pytest.mark.parametrize(("value", "multi"), [("false", False), ("0", False), ("off", False), ("true", True)])
def test_single_tenant_mode(value: str, multi: bool) -> None:
    settings = Settings.from_env({"CARDVAULT_MULTI_TENANT": value, "CARDVAULT_DEFAULT_TENANT": "Home"})
    assert (settings.multi_tenant, settings.default_tenant) == (multi, "home")
    assert Settings.from_env({}).multi_tenant is True
