"""Drive alembic programmatically, one database at a time, from any thread.

``SchemaScripts`` wraps one alembic environment (``tenant_schema/`` for tenant databases, ``alembic/``
for the control database). It parses the revision files once and then upgrades any number of
databases, each over its own fresh connection, so a fleet of 1,000+ tenant databases costs one psycopg
connection and one query per database that is already at head.

Thread safety: alembic publishes the running migration through process-wide module proxies
(``alembic.context`` and ``alembic.op``), installed and removed around every run. Two runs overlapping
in threads would send one database's DDL to the other's connection, or crash removing the proxy. So
the alembic part of a run holds a process-wide lock; connecting, the version check (the whole job for
databases already at head) and SQLAlchemy's connection set-up stay parallel. A fleet that must run
long DDL in parallel needs processes, not threads.

Rendering: ``render_steps`` turns each revision of an upgrade path into its SQL text (alembic's offline
mode, version-table update included), once per (from, to) step per instance, so a fleet can apply the
text over plain connections (``controlplane.migrations.apply``) instead of starting alembic per
database. A revision that sets ``offline_safe = False``, cannot be rendered (it reads data through
``op.get_bind()``) or leaves its transaction (``autocommit_block``) is rendered as "online only".

DSNs are libpq strings or URLs and may carry a password: only the database name and host appear in
messages and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import ScriptDirectory
from psycopg import conninfo, sql
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from controlplane.settings import ProvisioningSettings

__all__ = [
    "REGISTRY_VERSION_TABLE",
    "TENANT_VERSION_TABLE",
    "MigrationError",
    "RenderedStep",
    "SchemaScripts",
    "describe",
    "registry_scripts",
    "tenant_scripts",
]

TENANT_VERSION_TABLE = "tenant_schema_version"
REGISTRY_VERSION_TABLE = "alembic_version"

#: ``application_name`` of migration sessions, unless the DSN sets one.
APPLICATION_NAME = "cardvault-migrate"
#: ``connect_timeout`` (seconds) of migration sessions, unless the DSN sets one.
CONNECT_TIMEOUT = 10

log = logging.getLogger(__name__)

# See the module docstring: alembic's proxies are process-wide, so is this lock.
_ALEMBIC_LOCK = threading.Lock()

_StepsFn = Callable[[Any, MigrationContext], list[RevisionStep]]


class MigrationError(RuntimeError):
    """A schema upgrade or downgrade failed; the message names the database and the revisions."""


@dataclasses.dataclass(frozen=True)
class RenderedStep:
    """One revision of an upgrade path, from ``start`` to ``revision``.

    ``sql`` is what upgrading runs inside one transaction, the version-table update included; None when
    the revision must run through alembic online (``reason`` says why).
    """

    start: str | None
    revision: str
    sql: str | None
    reason: str = ""


class _Statements:
    """alembic's offline output buffer: one ``write`` per statement (``static_output``), kept apart."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def write(self, text: str) -> None:
        text = text.strip()
        if text and not text.startswith("-- Running "):
            self.statements.append(text)

    def flush(self) -> None:
        pass


def describe(dsn: str) -> str:
    """``dbname@host:port`` of ``dsn``, for messages (never the password)."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<invalid dsn>"
    host = params.get("host") or "local"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{params.get('dbname') or '?'}@{host}{port}"


class SchemaScripts:
    """One alembic environment, parsed once, applied to many databases.

    ``directory`` holds ``env.py`` and ``versions/``; ``version_table`` is where each database records
    its revision (passed to ``env.py`` through ``config.attributes``). Instances are immutable after
    construction and safe to share between threads.

    ``lock_timeout`` (seconds; None: the server's) applies to migration sessions whose DSN does not
    set one. A DDL statement queued behind a long transaction would otherwise block every query on
    that table meanwhile, and hold up the whole fleet behind the alembic lock; failing fast and
    retrying later is kinder.
    """

    def __init__(self, directory: Path, version_table: str, *, lock_timeout: float | None = 5.0) -> None:
        directory = Path(directory).resolve()
        if not (directory / "env.py").is_file():
            raise MigrationError(f"not an alembic environment (no env.py): {directory}")
        self.directory = directory
        self.version_table = version_table
        self.lock_timeout = lock_timeout
        self._script = ScriptDirectory.from_config(self._config())
        # Loads every revision file now (the map is memoised), not lazily in some worker thread.
        self._heads: tuple[str, ...] = tuple(self._script.get_heads())
        self._revisions = [s.revision for s in reversed(list(self._script.walk_revisions()))]
        self._version_query = sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(version_table))
        self._rendered: dict[tuple[str | None, str], RenderedStep] = {}
        #: How many revision steps alembic has rendered so far (each one once: the rest are cached).
        self.renders = 0

    def __repr__(self) -> str:
        return f"SchemaScripts({str(self.directory)!r}, version_table={self.version_table!r})"

    # -- the scripts ----------------------------------------------------------------------------

    def head(self) -> str:
        """The single head revision; a directory without one (or with several) is an error."""
        if len(self._heads) != 1:
            raise MigrationError(f"{self.directory} has {len(self._heads)} heads, expected exactly one")
        return self._heads[0]

    def revisions(self) -> list[str]:
        """Every revision id, from base to head."""
        return list(self._revisions)

    def upgrade_path(self, start: str | None, target: str = "head") -> list[str]:
        """Revisions that lead from ``start`` (None: base) to ``target``, in order."""
        return self._path(start, target, f"{self.version_table} at {start or 'base'}")

    def render_steps(self, start: str | None, target: str = "head") -> list[RenderedStep]:
        """The upgrade from ``start`` to ``target``, one ``RenderedStep`` per revision (cached)."""
        steps, previous = [], start
        for revision in self.upgrade_path(start, target):
            with _ALEMBIC_LOCK:  # alembic's globals; the cache too
                step = self._rendered.get((previous, revision))
                if step is None:
                    step = self._rendered[(previous, revision)] = self._render(previous, revision)
            steps.append(step)
            previous = revision
        return steps

    # -- one database ---------------------------------------------------------------------------

    def current(self, dsn: str) -> str | None:
        """The revision recorded in the database; None when it was never migrated (or is at base)."""
        with self._connect(dsn) as conn:
            return self._read_version(conn, dsn)

    def pending(self, dsn: str, target: str = "head") -> list[str]:
        """Revisions ``upgrade(dsn, target)`` would apply, in order (empty when up to date)."""
        return self._path(self.current(dsn), target, dsn)

    def upgrade(self, dsn: str, target: str = "head") -> str:
        """Upgrade the database to ``target``; return the revision reached.

        A database already at ``target`` costs one connection and one query, without alembic.
        Each revision commits on its own: when one fails, ``MigrationError`` says which, and the
        database stays at the last revision that succeeded.
        """
        return self.upgrade_from(dsn, target)[1]

    def upgrade_from(self, dsn: str, target: str = "head") -> tuple[str | None, str]:
        """Like ``upgrade``, returning ``(revision before, revision reached)``: equal if nothing ran."""
        goal = self._resolve(target)
        if goal is None:
            raise MigrationError(f"upgrade target {target!r} is not a revision")
        with self._connect(dsn) as conn:
            start = self._read_version(conn, dsn)
            if start == goal:
                return start, goal

            def steps(rev: Any, _context: MigrationContext) -> list[RevisionStep]:
                return self._script._upgrade_revs(goal, rev)

            self._run(conn, dsn, steps, goal, "upgrade", start)
        return start, goal

    def downgrade(self, dsn: str, target: str = "base") -> str | None:
        """Downgrade the database to ``target`` (``"base"``: nothing left); return the revision reached."""
        goal = self._resolve(target)
        with self._connect(dsn) as conn:
            start = self._read_version(conn, dsn)
            if start == goal:
                return goal

            def steps(rev: Any, _context: MigrationContext) -> list[RevisionStep]:
                return self._script._downgrade_revs(target, rev)

            self._run(conn, dsn, steps, target, "downgrade", start)
        return goal

    # -- internals ------------------------------------------------------------------------------

    def _config(self, **attributes: Any) -> Config:
        config = Config(attributes={"version_table": self.version_table, **attributes})
        # ConfigParser interpolates "%" in values.
        config.set_main_option("script_location", str(self.directory).replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        return config

    def _resolve(self, target: str) -> str | None:
        """The revision id ``target`` ("head", "base", an id or a unique prefix) stands for."""
        try:
            found = self._script.get_revisions(target)
        except Exception as exc:
            raise MigrationError(f"unknown revision {target!r} in {self.directory}: {exc}") from exc
        if len(found) > 1:
            raise MigrationError(f"{target!r} names several revisions in {self.directory}")
        return found[0].revision if found else None

    def _path(self, current: str | None, target: str, dsn: str) -> list[str]:
        goal = self._resolve(target)
        if current == goal:
            return []
        try:
            scripts = list(self._script.iterate_revisions(goal, current, implicit_base=True))
        except Exception as exc:
            raise MigrationError(
                f"{describe(dsn)}: cannot upgrade from {current or 'base'} to {target}: {exc}"
            ) from exc
        return [script.revision for script in reversed(scripts)]

    def _render(self, start: str | None, revision: str) -> RenderedStep:
        """alembic's offline SQL of the single step ``start`` -> ``revision`` (call with the lock held)."""
        script = self._script.get_revision(revision)
        if script is None or getattr(script.module, "offline_safe", True) is False:
            return RenderedStep(start, revision, None, "marked offline_safe = False")
        output = _Statements()

        def steps(rev: Any, _context: MigrationContext) -> list[RevisionStep]:
            return self._script._upgrade_revs(revision, rev)

        try:
            with EnvironmentContext(
                self._config(output_buffer=output),
                self._script,
                fn=steps,
                as_sql=True,
                starting_rev=start,
                destination_rev=revision,
            ):
                self._script.run_env()
        except Exception as exc:  # e.g. op.get_bind().execute(...): reading data needs a database
            log.info("revision %s runs online: %s: %s", revision, type(exc).__name__, exc)
            return RenderedStep(start, revision, None, f"cannot be rendered offline ({type(exc).__name__})")
        self.renders += 1
        # transaction_per_migration: the step comes as BEGIN; ... COMMIT;. Any other BEGIN or COMMIT is an
        # autocommit block (e.g. CREATE INDEX CONCURRENTLY), which cannot share the tenant's transaction.
        statements = output.statements
        wrapped = statements[:1] == ["BEGIN;"] and statements[-1:] == ["COMMIT;"]
        body = statements[1:-1]
        if not wrapped or "BEGIN;" in body or "COMMIT;" in body:
            return RenderedStep(start, revision, None, "leaves its transaction (autocommit block)")
        return RenderedStep(start, revision, "\n".join(body))

    def session_conninfo(self, dsn: str) -> str:
        """``dsn`` with the migration session's defaults: application name, connect and lock timeouts."""
        try:
            given = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # psycopg's message may quote part of the string, password included.
            raise MigrationError("invalid connection string") from None
        extra: dict[str, Any] = {}
        if "application_name" not in given:
            extra["application_name"] = APPLICATION_NAME
        if "connect_timeout" not in given:
            extra["connect_timeout"] = CONNECT_TIMEOUT
        options = str(given.get("options") or "")
        if self.lock_timeout is not None and "lock_timeout" not in options:
            extra["options"] = f"{options} -c lock_timeout={int(self.lock_timeout * 1000)}".strip()
        return conninfo.make_conninfo(dsn, **extra)

    @contextmanager
    def _connect(self, dsn: str) -> Iterator[psycopg.Connection[Any]]:
        info = self.session_conninfo(dsn)
        try:
            conn = psycopg.connect(info, autocommit=True)
        except psycopg.OperationalError as exc:
            raise MigrationError(f"cannot connect to {describe(dsn)}: {str(exc).strip()}") from exc
        try:
            yield conn
        finally:
            conn.close()

    def _read_version(self, conn: psycopg.Connection[Any], dsn: str) -> str | None:
        try:
            rows = conn.execute(self._version_query).fetchall()
        except psycopg.errors.UndefinedTable:
            return None  # autocommit: the failed statement leaves no aborted transaction behind
        except psycopg.Error as exc:
            raise MigrationError(f"{describe(dsn)}: cannot read {self.version_table}: {str(exc).strip()}") from exc
        if len(rows) > 1:
            found = ", ".join(sorted(str(row[0]) for row in rows))
            raise MigrationError(f"{describe(dsn)}: several revisions recorded ({found})")
        return str(rows[0][0]) if rows else None

    def _run(
        self,
        conn: psycopg.Connection[Any],
        dsn: str,
        steps: _StepsFn,
        destination: str | None,
        verb: str,
        start: str | None,
    ) -> None:
        """Run alembic over ``conn`` (closed afterwards, whatever happens)."""
        # alembic decides on transactions per revision; the psycopg connection must not autocommit.
        conn.autocommit = False
        engine = create_engine("postgresql+psycopg://", creator=lambda: conn, poolclass=NullPool)
        try:
            # Connect (SQLAlchemy's dialect set-up queries) outside the lock; nothing is begun yet,
            # so alembic commits each revision itself (transaction_per_migration in env.py).
            with engine.connect() as connection:
                config = self._config(connection=connection)
                log.info("%s %s: %s -> %s", verb, describe(dsn), start or "base", destination or "base")
                with (
                    _ALEMBIC_LOCK,
                    EnvironmentContext(config, self._script, fn=steps, as_sql=False, destination_rev=destination),
                ):
                    self._script.run_env()
        except Exception as exc:
            raise self._failure(exc, dsn, verb, start, destination) from exc
        finally:
            engine.dispose()

    def _failure(
        self, exc: Exception, dsn: str, verb: str, start: str | None, destination: str | None
    ) -> MigrationError:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = str(cause).strip() or type(cause).__name__
        # Where did it stop? One more connection, only on failure.
        try:
            reached: str | None = self.current(dsn)
            left = f"; left at {reached or 'base'}"
        except MigrationError:
            reached, left = start, ""
        failed_at = ""
        if verb == "upgrade" and destination is not None:
            try:
                path: Sequence[str] = self._path(reached, destination, dsn)
                failed_at = f" at {path[0]}" if path else ""
            except MigrationError:
                pass
        return MigrationError(
            f"{verb} of {describe(dsn)} from {start or 'base'} to {destination or 'base'} "
            f"failed{failed_at}{left}: {reason}"
        )


def tenant_scripts(settings: ProvisioningSettings) -> SchemaScripts:
    """The tenant schema (``settings.tenant_schema_dir``), versioned in ``tenant_schema_version``."""
    return SchemaScripts(settings.tenant_schema_dir, TENANT_VERSION_TABLE)


def registry_scripts(settings: ProvisioningSettings) -> SchemaScripts:
    """The control database schema (``settings.registry_schema_dir``), versioned in ``alembic_version``."""
    return SchemaScripts(settings.registry_schema_dir, REGISTRY_VERSION_TABLE)
