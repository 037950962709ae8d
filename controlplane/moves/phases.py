"""What a move does on the two servers, one idempotent action per ledger step (``MoveService`` runs them).

Before the freeze (the tenant serves as usual, from the source):

- ``create_database``: the target's copy ``plan.staging``, empty and closed to PUBLIC;
- ``schema``: the source's schema restored into it (``schema_copy``), privileges granted as provisioning
  grants them;
- ``subscribe``: a publication of every table and its replication slot on the source database, a
  subscription of the copy to it (the initial copy of every table starts);
- ``sync``: wait for the initial copy and for the copy to catch up with the source's WAL.

The write freeze (``freeze`` to ``switch``; its length is measured and recorded):

- ``freeze``: the tenant role may not log in to the source and its sessions are ended (its API answers
  503 ``tenant_unavailable`` meanwhile); every replica is told to close the tenant's pool;
- ``catch_up``: wait until the copy has received the source's WAL up to its end at the freeze;
- ``verify``: rows of every table counted equal on both sides, sequences set from the source's;
- ``detach``: the copy's subscription dropped;
- ``rename``: the copy takes the tenant's database name on the target, the tenant role is created there
  with its password (the registry's, unchanged) and CONNECT on it (locked out again for a suspended tenant);
- ``switch`` (``MoveService``): the registry names the target; its trigger invalidates every replica.

After it, ``unpublish``: the move's slots and publication dropped on the source; ``retire``: the source
database renamed ``plan.retired`` and recorded as a retired database (dropped after
``CARDVAULT_RESTORE_ROLLBACK_WINDOW`` by the restore upkeep), the tenant role off the source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from psycopg import conninfo

from controlplane.backups import dump, restore_catalog
from controlplane.backups import restore_repository as retired_repository
from controlplane.crypto import tenant_role_verifier
from controlplane.db import AsyncConn
from controlplane.moves import catalog, schema_copy
from controlplane.moves.models import MovePlan
from controlplane.platform import Platform
from controlplane.provisioning import catalog as provisioning_catalog
from controlplane.registry import repository as registry


class MoveTimedOut(RuntimeError):
    """The copy did not sync or catch up in time (the move is undone)."""


class CopyMismatch(RuntimeError):
    """Row counts differ between the source and the copy at the cutover (the move is undone)."""


def replication_conninfo(source_dsn: str, database: str) -> str:
    """How the target server's subscription reaches the tenant's database on the source: the source's
    management DSN (it must be reachable from the target server too) pointed at that database."""
    params = conninfo.conninfo_to_dict(source_dsn)
    params.pop("options", None)
    params |= {"dbname": database, "application_name": "cardvault-move"}
    return conninfo.make_conninfo("", **params)


class Phases:
    """The server-side actions of one move, each safe to run again (a resumed or settled move does)."""

    def __init__(self, platform: Platform, conn: AsyncConn, plan: MovePlan) -> None:
        self._p = platform
        self._conn = conn
        self.plan = plan

    # -- before the freeze ----------------------------------------------------------------------------

    async def create_database(self) -> None:
        async with self._p.fleet.admin(self._conn, self.plan.target_server_id) as admin:
            await provisioning_catalog.ensure_group_role(admin)
            await restore_catalog.create_closed_database(admin, self.plan.staging)

    async def schema(self) -> None:
        fleet, plan = self._p.fleet, self.plan
        async with fleet.connect_database(self._conn, plan.source_server_id, plan.database) as source:
            major = await restore_catalog.server_version(source) // 10000
        await schema_copy.copy_schema(
            self._p.settings.database,
            source_dsn=await fleet.dsn(self._conn, plan.source_server_id),
            source_database=plan.database,
            target_dsn=await fleet.dsn(self._conn, plan.target_server_id),
            target_database=plan.staging,
            major=major,
        )
        async with fleet.connect_database(self._conn, plan.target_server_id, plan.staging) as copy:
            await provisioning_catalog.grant_schema_privileges(copy, self._p.tenant_scripts.version_table)

    async def subscribe(self) -> None:
        fleet, plan = self._p.fleet, self.plan
        async with fleet.connect_database(self._conn, plan.source_server_id, plan.database) as source:
            await catalog.create_publication(source, plan.channel)
            await catalog.create_slot(source, plan.channel)
        source_info = replication_conninfo(await fleet.dsn(self._conn, plan.source_server_id), plan.database)
        async with fleet.connect_database(self._conn, plan.target_server_id, plan.staging) as copy:
            await catalog.create_subscription(copy, plan.channel, source_info)

    async def caught_up(self, seconds: float, *, initial: bool) -> None:
        """Wait until the copy has what the source had when this was called (and, ``initial``, until the
        initial copy of every table is done); ``MoveTimedOut`` after ``seconds``."""
        fleet, plan = self._p.fleet, self.plan
        waiting_for = "the initial copy of the tenant's tables"
        try:
            async with (
                asyncio.timeout(seconds),
                fleet.connect_database(self._conn, plan.target_server_id, plan.staging) as copy,
            ):
                if initial:
                    await _until(lambda: catalog.initial_copy_done(copy, plan.channel))
                async with fleet.admin(self._conn, plan.source_server_id) as admin:
                    lsn = await catalog.flushed_lsn(admin)
                waiting_for = f"the copy to catch up with the source (WAL {lsn})"
                await _until(lambda: catalog.received_at_least(copy, plan.channel, lsn))
        except TimeoutError:
            raise MoveTimedOut(f"timed out after {seconds:g} s waiting for {waiting_for}") from None

    # -- the freeze ------------------------------------------------------------------------------------

    async def freeze(self, seconds: float) -> None:
        """The tenant role locked out of the source, and every session of it gone (``MoveTimedOut`` if one
        outlives ``seconds``): from here on no tenant write can commit there."""
        async with self._p.fleet.admin(self._conn, self.plan.source_server_id) as admin:
            await provisioning_catalog.set_role_login(admin, self.plan.role, self.plan.database, allowed=False)
            try:
                async with asyncio.timeout(seconds):
                    await _until(lambda: _none_left(admin, self.plan.role))
            except TimeoutError:
                raise MoveTimedOut(f"sessions of {self.plan.role} outlived the freeze's {seconds:g} s") from None

    async def verify(self) -> int:
        """Rows of every table equal on both sides (``CopyMismatch`` otherwise), sequences carried over;
        the number of rows."""
        fleet, plan = self._p.fleet, self.plan
        async with (
            fleet.connect_database(self._conn, plan.source_server_id, plan.database) as source,
            fleet.connect_database(self._conn, plan.target_server_id, plan.staging) as copy,
        ):
            expected, copied = await asyncio.gather(dump.count_rows(source), dump.count_rows(copy))
            if expected != copied:
                differ = sorted(t for t in expected.keys() | copied.keys() if expected.get(t) != copied.get(t))
                raise CopyMismatch(f"row counts differ after the catch-up in {', '.join(differ)}")
            await catalog.set_sequences(copy, await catalog.sequence_values(source))
        return sum(expected.values())

    async def detach(self) -> None:
        """The copy's subscription dropped (the copy may then be renamed); the source is not reached."""
        await self._drop_subscription()

    async def unpublish(self) -> None:
        """The move's slots and publication dropped on the source (after the switch: off the freeze)."""
        await self._drop_subscription()
        await self._unpublish()

    async def _drop_subscription(self) -> None:
        fleet, plan = self._p.fleet, self.plan
        async with fleet.admin(self._conn, plan.target_server_id) as admin:
            present = await restore_catalog.existing(admin, [plan.staging])
        if plan.staging in present:
            async with fleet.connect_database(self._conn, plan.target_server_id, plan.staging) as copy:
                await catalog.drop_subscription(copy, plan.channel)

    async def _unpublish(self) -> None:
        fleet, plan = self._p.fleet, self.plan
        async with fleet.admin(self._conn, plan.source_server_id) as admin:
            for name in (plan.database, plan.retired):
                await catalog.drop_slots(admin, name)
            live = plan.database in await restore_catalog.existing(admin, [plan.database])
        if live:
            async with fleet.connect_database(self._conn, plan.source_server_id, plan.database) as source:
                await catalog.drop_publication(source, plan.channel)

    async def rename(self) -> None:
        plan = self.plan
        encrypted = await registry.role_password_encrypted(self._conn, plan.tenant_id)
        assert encrypted is not None
        verifier = tenant_role_verifier(self._p.box.decrypt(encrypted))
        async with self._p.fleet.admin(self._conn, plan.target_server_id) as admin:
            await catalog.rename_database(admin, plan.staging, plan.database)
            await provisioning_catalog.create_tenant_role(admin, plan.role, plan.database, verifier)
            if not plan.login:  # suspended: locked out as suspend leaves it
                await provisioning_catalog.set_role_login(admin, plan.role, plan.database, allowed=False)

    # -- after the switch ------------------------------------------------------------------------------

    async def retire(self) -> None:
        """The source database renamed and kept for the rollback window; the tenant role off the source."""
        plan = self.plan
        async with self._p.fleet.admin(self._conn, plan.source_server_id) as admin:
            await provisioning_catalog.set_role_login(admin, plan.role, plan.database, allowed=False)
            await catalog.rename_database(admin, plan.database, plan.retired)
            await provisioning_catalog.drop_role(admin, plan.role)
        await retired_repository.retire(
            self._conn,
            server_id=plan.source_server_id,
            database_name=plan.retired,
            tenant_id=plan.tenant_id,
            reason=f"move #{plan.move_id} to another server",
            keep_seconds=self._p.settings.backups.rollback_window,
        )

    # -- undoing ----------------------------------------------------------------------------------------

    async def undo(self, *, reopen: bool) -> None:
        """Everything the move made goes; the source serves again (its role may log in when ``reopen``).

        The source comes first: writes resume there even when the target cannot be reached now (the copy
        is then removed by a later settling: the operation stays ``running`` until it is).
        """
        plan = self.plan
        await self._unpublish()
        async with self._p.fleet.admin(self._conn, plan.source_server_id) as admin:
            await provisioning_catalog.set_role_login(admin, plan.role, plan.database, allowed=reopen)
        await self._drop_subscription()
        async with self._p.fleet.admin(self._conn, plan.target_server_id) as admin:
            await provisioning_catalog.drop_database(admin, plan.staging)
            # Renamed already (the registry does not name the target: it is the move's copy, not the tenant's).
            await provisioning_catalog.drop_database(admin, plan.database)
            await provisioning_catalog.drop_role(admin, plan.role)


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (the caller bounds the wait)."""
    while True:
        if await check():
            return
        await asyncio.sleep(catalog.POLL_INTERVAL)


async def _none_left(admin: AsyncConn, role: str) -> bool:
    return await catalog.role_sessions(admin, role) == 0
