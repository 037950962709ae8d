"""The tenant's schema (no rows) copied to the target: ``pg_dump --schema-only`` of the source database,
restored by ``pg_restore`` into the target's empty copy; logical replication then fills the tables.

The dump is taken of the live database, so the copy is at the tenant's own schema revision whatever
the target's template is at. As for backups (``backups.dump``), neither tool gets a secret on its
command line: the password is in a private passfile named by ``PGPASSFILE``. A schema dump is small
(kilobytes), so it is held in memory between the two.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from controlplane.backups import dump
from controlplane.settings import DatabaseSettings

#: Bytes of a tool's stderr kept for the error message.
_STDERR_TAIL = 4000


class SchemaCopyFailed(RuntimeError):
    """``pg_dump`` or ``pg_restore`` of the schema exited with an error; the message says which and why."""


async def _run(tool: Path, args: list[str], dsn: str, database: str, settings: DatabaseSettings, feed: bytes) -> bytes:
    target, password = dump.client_conninfo(dsn, database, connect_timeout=settings.connect_timeout)
    with dump.passfile(password) as passfile:
        proc = await asyncio.create_subprocess_exec(
            str(tool),
            *args,
            "--no-password",
            f"--dbname={target}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dump.client_env(passfile),
        )
        out, err = await proc.communicate(feed)
    if proc.returncode != 0:
        message = err[-_STDERR_TAIL:].decode(errors="replace").strip()
        raise SchemaCopyFailed(f"{tool.name} exited with status {proc.returncode}: {message or 'no message'}")
    return out


async def copy_schema(
    settings: DatabaseSettings,
    *,
    source_dsn: str,
    source_database: str,
    target_dsn: str,
    target_database: str,
    major: int,
) -> None:
    """The schema of ``source_database`` recreated in the empty ``target_database`` (owned by the target's
    management user; privileges are granted afterwards as provisioning grants them)."""
    bindir = await asyncio.to_thread(dump.find_client_bindir, major, "pg_restore")
    schema = await _run(
        bindir / "pg_dump",
        ["--schema-only", "--format=custom", "--no-owner", "--no-privileges", "--no-publications",
         "--no-subscriptions"],
        source_dsn, source_database, settings, b"",
    )  # fmt: skip
    await _run(
        bindir / "pg_restore",
        ["--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"],
        target_dsn, target_database, settings, schema,
    )  # fmt: skip
