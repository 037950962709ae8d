"""Upgrade tenant databases with rendered SQL over plain async connections: no alembic per tenant.

alembic stays the source of truth: ``SchemaScripts.render_steps`` renders each revision step once per
run (offline mode). Per tenant, ``Upgrader.upgrade`` then costs one connection, one version read and,
when something is pending, one transaction sent as one query (one more per additional revision):
``BEGIN``, a guard that locks the version row and stops unless it is still where it was read, each
revision's SQL (its version-table update included), the tenant group's grants, ``COMMIT``. A tenant is
therefore either fully upgraded or untouched, never half-way through a revision.

A revision that cannot run from rendered SQL (``RenderedStep.sql`` is None: it reads data, or leaves its
transaction) goes through ``online``, the classic alembic path, for that stretch of the upgrade; the
rendered stretches before and after it still run as above.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from controlplane.migrations.fleet_runner import Target
from controlplane.schemas.alembic_runner import MigrationError, RenderedStep, SchemaScripts, describe

__all__ = ["OnlineUpgrade", "Upgrader"]

#: ``online(dsn, revision)``: upgrade with alembic online to ``revision`` and grant; the revision reached.
OnlineUpgrade = Callable[[str, str], Awaitable[str]]


def _segments(steps: Sequence[RenderedStep]) -> Iterator[list[RenderedStep]]:
    """Consecutive steps that run the same way (all rendered, or all online)."""
    segment: list[RenderedStep] = []
    for step in steps:
        if segment and (segment[-1].sql is None) != (step.sql is None):
            yield segment
            segment = []
        segment.append(step)
    if segment:
        yield segment


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


class Upgrader:
    """Brings tenant databases to ``goal``; one instance per fleet run, shared by its workers.

    ``grants`` run in the same transaction as the upgrade, so new tables are usable by the tenant's
    role as soon as they exist.
    """

    def __init__(
        self,
        scripts: SchemaScripts,
        goal: str,
        grants: Sequence[sql.Composable],
        online: OnlineUpgrade,
    ) -> None:
        self._scripts = scripts
        self._goal = goal
        self._grants = sql.SQL(";\n").join(grants) if grants else None
        self._online = online
        self._plans: dict[str | None, list[RenderedStep]] = {}
        table = sql.Identifier(scripts.version_table)
        self._read = sql.SQL("SELECT version_num FROM {}").format(table)
        # Another run may have moved the database since it was read: then stop, change nothing.
        self._guard = sql.SQL(
            """DO $guard$
            DECLARE
                found text := (SELECT string_agg(v, ', ') FROM (SELECT version_num FROM {table} FOR UPDATE) AS r (v));
            BEGIN
                IF found IS DISTINCT FROM {expected} THEN
                    RAISE EXCEPTION '% moved to % while upgrading from %; run again',
                        {name}, coalesce(found, 'base'), {expected};
                END IF;
            END
            $guard$"""
        )
        self._table = table

    async def pending(self, target: Target) -> str:
        """Dry run: the revisions the upgrade would apply (space-separated), or ``goal`` if none."""
        async with await self._connect(target.dsn) as conn:
            start = await self._current(conn, target.dsn)
        path = self._scripts.upgrade_path(start, self._goal)
        return " ".join(path) if path else self._goal

    async def upgrade(self, target: Target) -> str:
        """Upgrade the tenant database to ``goal``; the revision reached (``MigrationError`` on failure)."""
        return (await self.upgrade_from(target))[1]

    async def upgrade_from(self, target: Target) -> tuple[str | None, str]:
        """``upgrade``, also saying where the database stood before (``goal`` too when it had nothing to do)."""
        dsn = target.dsn
        async with await self._connect(dsn) as conn:
            start = await self._current(conn, dsn)
            if start == self._goal:
                return start, self._goal
            steps = self._plans.get(start)
            if steps is None:  # rendered once per step and run; cached here per starting revision
                steps = self._plans[start] = await asyncio.to_thread(self._scripts.render_steps, start, self._goal)
            segments = list(_segments(steps))
            reached = start
            for number, segment in enumerate(segments):
                if segment[0].sql is None:
                    reached = await self._online(dsn, segment[-1].revision)
                    continue
                await self._apply(conn, dsn, start, reached, segment, grant=number == len(segments) - 1)
                reached = segment[-1].revision
        return start, self._goal

    async def _connect(self, dsn: str) -> psycopg.AsyncConnection[Any]:
        info = self._scripts.session_conninfo(dsn)
        try:
            return await psycopg.AsyncConnection.connect(info, autocommit=True)
        except psycopg.OperationalError as exc:
            raise MigrationError(f"cannot connect to {describe(dsn)}: {_reason(exc)}") from exc

    async def _current(self, conn: psycopg.AsyncConnection[Any], dsn: str) -> str | None:
        try:
            rows = await (await conn.execute(self._read)).fetchall()
        except psycopg.errors.UndefinedTable:
            return None  # autocommit: nothing is left aborted
        except psycopg.Error as exc:
            raise MigrationError(f"{describe(dsn)}: cannot read {self._scripts.version_table}: {_reason(exc)}") from exc
        if len(rows) > 1:
            raise MigrationError(
                f"{describe(dsn)}: several revisions recorded ({', '.join(sorted(r[0] for r in rows))})"
            )
        return str(rows[0][0]) if rows else None

    async def _apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        dsn: str,
        start: str | None,
        reached: str | None,
        segment: list[RenderedStep],
        *,
        grant: bool,
    ) -> None:
        """Run rendered steps (and the grants) in one transaction; on failure nothing of them stays.

        One query per step, in autocommit mode with the transaction spelled out: the first also opens
        the transaction and checks the version row, the last also grants and commits.
        """
        head: list[sql.Composable] = [sql.SQL("BEGIN")]
        if reached is not None:
            name = sql.Literal(self._scripts.version_table)
            head.append(self._guard.format(table=self._table, expected=sql.Literal(reached), name=name))
        tail: list[sql.Composable] = [self._grants] if grant and self._grants is not None else []
        tail.append(sql.SQL("COMMIT"))
        running = segment[0].revision
        try:
            for number, step in enumerate(segment):
                running = step.revision
                assert step.sql is not None
                parts: list[sql.Composable] = [*head] if number == 0 else []
                parts.append(sql.SQL(step.sql))  # rendered by alembic from the revision files, not input
                if number == len(segment) - 1:
                    parts.extend(tail)
                await conn.execute(sql.SQL(";\n").join(parts))
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(b"ROLLBACK")
            raise MigrationError(
                f"upgrade of {describe(dsn)} from {start or 'base'} to {self._goal} failed at {running}"
                f"; left at {reached or 'base'}: {_reason(exc)}"
            ) from exc
