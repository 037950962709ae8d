"""Helpers of the backup tests: tenants with cards written straight into their databases (as the superuser,
around the code under test), the stored object of a backup read back, and the superuser's view of rows."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import psycopg
from psycopg import conninfo

from controlplane.backups.models import Backup
from controlplane.objectstore import ObjectStore
from controlplane.objectstore.sealed import unseal, unwrap_key
from controlplane.platform import Platform
from controlplane.registry.models import Tenant


def tenant_dsn(admin_dsn: str, tenant: Tenant) -> str:
    return conninfo.make_conninfo(admin_dsn, dbname=tenant.database_name)


async def add_cards(admin_dsn: str, tenant: Tenant, notes: list[str]) -> None:
    """One card per note, plus a player and a team (so three tables have rows)."""
    async with await psycopg.AsyncConnection.connect(tenant_dsn(admin_dsn, tenant), autocommit=True) as conn:
        await conn.execute("INSERT INTO players (last_name) VALUES ('Ruth')")
        await conn.execute("INSERT INTO teams (name) VALUES ('Yankees')")
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO cards (cardnumber, year, notes) VALUES (%s, 1952, %s)",
                [(f"C-{i}", note) for i, note in enumerate(notes)],
            )


async def table_counts(admin_dsn: str, tenant: Tenant) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(tenant_dsn(admin_dsn, tenant), autocommit=True) as conn:
        cur = await conn.execute("SELECT schemaname || '.' || relname FROM pg_stat_user_tables ORDER BY 1")
        names = [r[0] for r in await cur.fetchall()]
        counts = {}
        for name in names:
            schema, table = name.split(".")
            cur = await conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(schema, table))
            )
            row = await cur.fetchone()
            assert row is not None
            counts[name] = int(row[0])
        return counts


async def stored_bytes(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


async def data_key(platform: Platform, backup_id: uuid.UUID) -> bytes:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT data_key_encrypted FROM backups WHERE id = %s", (backup_id,))
        row = await cur.fetchone()
    assert row is not None
    return unwrap_key(platform.box, row["data_key_encrypted"])


async def plaintext(platform: Platform, backup: Backup) -> bytes:
    """The backup's archive, unsealed (the pg_dump -Fc bytes)."""
    key = await data_key(platform, backup.id)

    async def chunks() -> Any:
        yield await stored_bytes(platform.objects, backup.object_key)

    return b"".join([c async for c in unseal(chunks(), key)])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def backup_rows(platform: Platform, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT * FROM backups WHERE tenant_id = %s ORDER BY created_at", (tenant_id,))
        return list(await cur.fetchall())
