"""Dumping one tenant database: ``pg_dump -Fc`` of the server's major version, streamed, sealed and stored.

- **Binaries.** ``pg_dump`` must be the server's major version (``SHOW server_version_num``): an older one
  refuses a newer server, and a newer one writes archives that the server's own ``pg_restore`` may not
  read. It is looked for in ``/usr/lib/postgresql/<major>/bin`` (Debian, Ubuntu), ``/usr/pgsql-<major>/bin``
  (PGDG RPMs), Homebrew's ``postgresql@<major>``, then on ``PATH``; none there is a ``PgDumpNotFound``
  naming the package to install.
- **One snapshot.** A REPEATABLE READ, READ ONLY transaction on the tenant database exports its snapshot
  (``pg_export_snapshot()``), counts the rows of every table, reads the schema revision and the ``files``
  rows (``files.snapshot_files``: the stored files the backup keeps beside the archive) in it, and stays
  open while ``pg_dump --snapshot`` runs: the manifest describes exactly the data the archive holds.
- **No secret in the process list.** ``pg_dump`` gets the server's DSN as a conninfo *without* its
  password (``-d``, visible in ``ps``); the password goes into a passfile (mode 0600, in a private temporary
  directory removed afterwards) named by ``PGPASSFILE``. The child's environment carries no other ``PG*``
  variable of ours.
- **Streamed.** stdout is read as it comes and goes through ``seal`` into ``ObjectStore.put``; nothing is
  buffered whole. A non-zero exit raises ``DumpFailed`` (with the end of stderr) *inside* the stream, so
  the store keeps nothing of it; a stream abandoned for any reason kills ``pg_dump``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from controlplane import db
from controlplane.backups.files import FileEntry, snapshot_files
from controlplane.backups.models import Manifest
from controlplane.errors import ConfigError
from controlplane.objectstore import ObjectStore, StoredObject
from controlplane.objectstore.sealed import seal
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE
from controlplane.settings import DatabaseSettings

#: Bytes read from pg_dump's stdout at a time.
READ_SIZE = 256 * 1024
#: Bytes of pg_dump's stderr kept for the error message (its end says what went wrong).
STDERR_TAIL = 8 * 1024
#: Where client binaries of one major version live, besides ``PATH``.
_CANDIDATES = (
    "/usr/lib/postgresql/{major}/bin",
    "/usr/pgsql-{major}/bin",
    "/opt/homebrew/opt/postgresql@{major}/bin",
    "/usr/local/opt/postgresql@{major}/bin",
)
#: Connection keywords that are secrets: never on a command line.
_SECRETS = ("password", "sslpassword")


class PgDumpNotFound(ConfigError):
    """No ``pg_dump`` of the server's major version on this machine."""

    code = "pg_dump_not_found"


class DumpFailed(RuntimeError):
    """``pg_dump`` (or the snapshot around it) failed; the message says why."""


def install_hint(major: int) -> str:
    return (
        f"apt-get install postgresql-client-{major} (Debian/Ubuntu; from apt.postgresql.org if the distribution "
        f"lacks it), dnf install postgresql{major} (RHEL/Fedora, PGDG repository) or brew install "
        f"postgresql@{major} (macOS)"
    )


@functools.lru_cache(maxsize=32)
def tool_version(tool: Path) -> str:
    """``<tool> --version`` (e.g. ``pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)``)."""
    done = subprocess.run(
        [str(tool), "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False
    )
    if done.returncode != 0:
        raise OSError(f"{tool} --version failed: {done.stderr.strip()}")
    return done.stdout.strip()


def version_major(version: str) -> int | None:
    """The major version in ``pg_dump --version`` output (``15`` of ``... 15.20 ...``, ``9`` of ``9.6.24``)."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", version)
    return int(match.group(1)) if match else None


def find_client_bindir(major: int, tool: str = "pg_dump", extra: Sequence[Path] = ()) -> Path:
    """The directory holding ``tool`` of PostgreSQL ``major``; ``PgDumpNotFound`` saying what to install."""
    looked: list[str] = []
    candidates = [*extra, *(Path(c.format(major=major)) for c in _CANDIDATES)]
    on_path = shutil.which(tool)
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        path = directory / tool
        if not (path.is_file() and os.access(path, os.X_OK)):
            looked.append(f"{directory} (no {tool})")
            continue
        try:
            found = version_major(tool_version(path))
        except (OSError, subprocess.SubprocessError) as exc:
            looked.append(f"{directory} ({exc})")
            continue
        if found == major:
            return directory
        looked.append(f"{directory} ({tool} {found})")
    where = "; ".join(looked) or "nowhere"
    raise PgDumpNotFound(
        f"{tool} {major} not found: the server runs PostgreSQL {major} and backups need its client binaries "
        f"(looked in: {where}). Install them: {install_hint(major)}",
        major=major,
    )


@contextlib.contextmanager
def passfile(password: str | None) -> Iterator[Path | None]:
    """A passfile holding ``password`` for a client tool (mode 0600, in a private directory removed
    afterwards); None without a password."""
    if password is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="cardvault-pgpass-") as private:  # mode 0700
        path = Path(private) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            escaped = password.replace("\\", "\\\\").replace(":", "\\:")
            out.write(f"*:*:*:*:{escaped}\n")
        yield path


def client_conninfo(dsn: str, database: str, *, connect_timeout: float) -> tuple[str, str | None]:
    """The conninfo for ``-d`` (no secret in it) and the password, taken out of ``dsn``."""
    params = conninfo.conninfo_to_dict(dsn)
    if params.get("sslpassword"):
        raise DumpFailed("the server's DSN has an sslpassword, which pg_dump can only get on its command line")
    password = params.pop("password", None)
    for secret in _SECRETS:
        params.pop(secret, None)
    params |= {
        "dbname": database,
        "application_name": f"{db.APPLICATION_NAME}-backup",
        "connect_timeout": max(1, int(connect_timeout)),
    }
    return conninfo.make_conninfo("", **params), (str(password) if password is not None else None)


def client_env(passfile: Path | None) -> dict[str, str]:
    """The child's environment: ours without any ``PG*`` variable, plus the passfile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if passfile is not None:
        env["PGPASSFILE"] = str(passfile)
    return env


class Dumper:
    """Runs ``pg_dump`` of tenant databases into an object store (one per service; safe for concurrent use).

    ``bindirs`` pins the client binaries of a major version (tests point it at a directory without them).
    """

    def __init__(self, settings: DatabaseSettings, *, bindirs: Mapping[int, Path] | None = None) -> None:
        self._db = settings
        self._pinned = dict(bindirs or {})
        self._found: dict[int, Path] = {}

    async def bindir(self, major: int) -> Path:
        """The client binaries' directory for a server of PostgreSQL ``major``."""
        if major in self._pinned:
            return await _check_pinned(self._pinned[major], major)
        if major not in self._found:  # only successes are kept: binaries installed later are found then
            self._found[major] = await asyncio.to_thread(find_client_bindir, major)
        return self._found[major]

    async def dump(
        self, dsn: str, database: str, store: ObjectStore, key: str, data_key: bytes
    ) -> tuple[StoredObject, Manifest, list[FileEntry]]:
        """Dump ``database`` of the server ``dsn`` reaches, sealed with ``data_key``, into ``store`` under ``key``;
        the stored object, the manifest and the ``files`` rows of the dump's snapshot.

        Raises ``PgDumpNotFound`` (nothing run), ``DumpFailed`` or the store's error; the store then holds
        nothing under ``key``.
        """
        try:
            async with db.connect(dsn, self._db, dbname=database, role="backup") as conn:
                version_num = await _scalar(conn, "SHOW server_version_num")
                major = int(version_num) // 10000
                pg_dump = await self.bindir(major) / "pg_dump"
                version = await asyncio.to_thread(tool_version, pg_dump)
                # The snapshot must outlive pg_dump's start; counting a big table may take long.
                timeout = int(self._db.migration_statement_timeout * 1000)
                await conn.execute(f"SET statement_timeout = {timeout}")
                await conn.execute("SET idle_in_transaction_session_timeout = 0")
                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await conn.set_read_only(True)
                async with conn.transaction():
                    snapshot = await _scalar(conn, "SELECT pg_export_snapshot()")
                    manifest = Manifest(
                        schema_revision=await _schema_revision(conn),
                        server_version=int(version_num),
                        tables=await count_rows(conn),
                        pg_dump=version,
                    )
                    referenced = await snapshot_files(conn)
                    async with self._pg_dump(pg_dump, dsn, database, snapshot) as run:
                        stored = await store.put(key, seal(run.stdout(), data_key))
        except psycopg.Error as exc:
            raise DumpFailed(f"cannot read {database}: {str(exc).strip()}") from exc
        return stored, manifest, referenced

    @asynccontextmanager
    async def _pg_dump(self, pg_dump: Path, dsn: str, database: str, snapshot: str) -> AsyncIterator[_Run]:
        target, password = client_conninfo(dsn, database, connect_timeout=self._db.connect_timeout)
        with passfile(password) as secrets:
            proc = await asyncio.create_subprocess_exec(
                str(pg_dump),
                "--format=custom",
                "--no-password",
                f"--snapshot={snapshot}",
                f"--lock-wait-timeout={int(self._db.statement_timeout * 1000)}",
                f"--dbname={target}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=client_env(secrets),
            )
            run = _Run(proc)
            try:
                yield run
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                if not run.stderr.done():
                    run.stderr.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.stderr


class _Run:
    """A running ``pg_dump``: its stdout as a stream, the end of its stderr read alongside."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stderr = asyncio.create_task(_tail(proc.stderr))

    async def stdout(self) -> AsyncIterator[bytes]:
        """The archive as it comes; ``DumpFailed`` at the end when pg_dump exits non-zero."""
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(READ_SIZE):
            yield chunk
        code = await self.proc.wait()
        if code != 0:
            message = (await self.stderr).decode(errors="replace").strip()
            raise DumpFailed(f"pg_dump exited with status {code}: {message or 'no message'}")


async def _check_pinned(bindir: Path, major: int) -> Path:
    path = bindir / "pg_dump"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise PgDumpNotFound(f"pg_dump {major} not found in {bindir}. Install it: {install_hint(major)}", major=major)
    found = version_major(await asyncio.to_thread(tool_version, path))
    if found != major:
        raise PgDumpNotFound(f"{path} is pg_dump {found}, the server needs {major}: {install_hint(major)}")
    return bindir


async def _tail(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(READ_SIZE):
        kept = (kept + chunk)[-STDERR_TAIL:]
    return kept


async def _scalar(conn: db.AsyncConn, query: str) -> str:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    return str(next(iter(row.values())))


async def _schema_revision(conn: db.AsyncConn) -> str | None:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL AS present", (f"public.{TENANT_VERSION_TABLE}",))
    row = await cur.fetchone()
    if not row or not row["present"]:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT string_agg(version_num, ',' ORDER BY version_num) AS rev FROM {}").format(
            sql.Identifier("public", TENANT_VERSION_TABLE)
        )
    )
    row = await cur.fetchone()
    return str(row["rev"]) if row and row["rev"] is not None else None


async def count_rows(conn: db.AsyncConn) -> dict[str, int]:
    """Rows of every table (``schema.table``) the dump holds data of: ordinary and partitioned tables outside
    the system schemas, extension members excepted. Exact counts, in the caller's snapshot, one statement."""
    cur = await conn.execute(
        """
        SELECT n.nspname AS schema, c.relname AS name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY 1, 2
        """
    )
    tables = [(r["schema"], r["name"]) for r in await cur.fetchall()]
    if not tables:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS t, count(*) AS n FROM {}").format(sql.Literal(f"{s}.{t}"), sql.Identifier(s, t))
        for s, t in tables
    )
    cur = await conn.execute(query)
    return {r["t"]: int(r["n"]) for r in await cur.fetchall()}
