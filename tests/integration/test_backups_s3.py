"""Backups into S3-compatible object storage, end to end: a real ``moto_server``, the real boto3 client, the
settings (``CARDVAULT_BACKUP_S3_*``) choosing the store, through the service and through the command line.

The object lands under the configured prefix, holds ciphertext only, matches the row's sha256 and size,
opens into a ``pg_dump`` archive, and expiry deletes it from the bucket. A failed dump leaves neither an
object nor an unfinished multipart upload. A backup read back from the bucket verifies and restores; one
cut short in the bucket is refused before anything changes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controlplane.backups.dump import Dumper
from controlplane.backups.models import BackupStatus
from controlplane.backups.restore_models import BackupCorrupted
from controlplane.backups.service import BackupService
from controlplane.objectstore.s3 import S3ObjectStore
from controlplane.platform import Platform
from controlplane.provisioning.models import OperationState
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.backup_support import add_cards, plaintext, table_counts, tenant_dsn
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.restore_support import restores_of, verifications
from tests.integration.tenant_support import execute
from tests.s3_harness import PREFIX, S3Server

NOTE = "a card note that must never reach the bucket in clear 91b2"


@pytest.fixture
async def s3_platform(s3_settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(s3_settings, migrate=False) as opened:
        yield opened


async def test_a_backup_goes_to_the_bucket_sealed_and_expires_from_it(
    s3_platform: Platform, s3_server: S3Server, s3_bucket: str, pg_admin_dsn: str
) -> None:
    assert isinstance(s3_platform.objects, S3ObjectStore)
    tenant = await TenantService(s3_platform).create(name="Acme", slug="acme", tier="enterprise")
    await add_cards(pg_admin_dsn, tenant, [NOTE] * 20)
    backups = BackupService(s3_platform)
    try:
        backup = await backups.create("acme")
        assert backup.status is BackupStatus.SUCCEEDED, backup.error
        assert backup.store == f"s3://{s3_bucket}/{PREFIX}"
        raw = s3_server.client()
        stored = raw.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/{backup.object_key}")["Body"].read()
        assert NOTE.encode() not in stored
        assert (len(stored), hashlib.sha256(stored).hexdigest()) == (backup.bytes, backup.sha256)
        assert (await plaintext(s3_platform, backup)).startswith(b"PGDMP")
        assert backup.manifest["tables"]["public.cards"] == 20

        async with s3_platform.control.connection() as conn:
            await conn.execute("UPDATE backups SET expires_at = now() WHERE id = %s", (backup.id,))
        assert await backups.expire() == 1
        assert raw.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0

        failing = BackupService(s3_platform, dumper=Dumper(s3_platform.settings.database, bindirs={15: Path("/")}))
        try:
            failed = await failing.create("acme")
        finally:
            await failing.stop()
        assert failed.status is BackupStatus.FAILED
        assert raw.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
        assert raw.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    finally:
        await backups.stop()


async def test_the_command_line_backs_up_into_s3_when_configured(
    service: TenantService,
    control_dsn: str,
    tenant_template_name: str,
    tmp_path: Path,
    s3_env: dict[str, str],
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data", **s3_env)
    created = ok(await asyncio.to_thread(run_cli, env, "backups", "create", "acme", "--json")).json()
    assert created["status"] == "succeeded" and created["store"] == f"s3://{s3_bucket}/{PREFIX}"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == [f"{PREFIX}/backups/{tenant.id}/{created['id']}.dump.cvs"]
    assert not (tmp_path / "data" / "backups").exists()  # nothing in the local directory


async def test_a_backup_in_the_bucket_verifies_and_restores_and_once_truncated_is_refused(
    s3_platform: Platform, s3_server: S3Server, s3_bucket: str, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenants = TenantService(s3_platform)
    tenant = await tenants.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one", "two"])
    async with restores_of(s3_platform, tenants) as r:
        backup = await r.backup("acme")
        await execute(tenant_dsn(pg_admin_dsn, tenant), "INSERT INTO cards (cardnumber) VALUES ('after the backup')")
        verified = await r.verifier.verify(backup.id)
        assert verified.ok, verified.detail
        op = await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)
        assert op.state is OperationState.SUCCEEDED
        restored = await table_counts(pg_admin_dsn, tenant)
        assert (restored["public.cards"], restored["public.players"]) == (2, 1)

        # The object cut short in the bucket: refused before anything changes, and recorded as such.
        damaged = await r.backup("acme")
        raw, key = s3_server.client(), f"{PREFIX}/{damaged.object_key}"
        stored = raw.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        raw.put_object(Bucket=s3_bucket, Key=key, Body=stored[: len(stored) // 2])
        with pytest.raises(BackupCorrupted) as refused:
            await r.restores.restore("acme", backup_id=damaged.id, pre_backup=False)
        assert refused.value.status == 422 and "bytes" in refused.value.detail
        assert await table_counts(pg_admin_dsn, tenant) == restored
        (found,) = await verifications(control_dsn, damaged.id)
        assert found["ok"] is False and "refused at restore" in found["detail"]
