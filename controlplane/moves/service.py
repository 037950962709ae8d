"""``MoveService``: a tenant's database moved to another server while the tenant keeps serving.

``move(slug, to)`` (``cardvault tenants move``, ``POST /admin/tenants/{slug}/move``), under the tenant's
lock, with a ``move`` operation in the ledger whose params are the ``MovePlan`` and a ``tenant_moves`` row:

1. **Refusals** (``MoveRefused``, 409; nothing is changed): the tenant is neither active nor suspended
   (provisioning, deleting, broken), the target is its own server, is draining, or holds
   ``CARDVAULT_SERVER_MAX_TENANTS`` tenants already; the source's ``wal_level`` is not ``logical``; the
   target runs an older PostgreSQL. An unknown target: 400.
2. **Copy** while the tenant serves (``phases``): schema, then PostgreSQL logical replication (publication
   on the source database, subscription on the target's copy), until the copy has caught up. Before it
   subscribes, the move takes one of the target's move slots (``slots``), waiting for one if need be, and
   keeps it until its subscription is gone; no slot within ``CARDVAULT_MOVE_SYNC_TIMEOUT``: undone, 409
   ``move_busy``.
3. **Write freeze**: the tenant role is locked out of the source, the copy catches up to the source's WAL
   end, rows are counted equal, sequences are carried over, the copy takes the tenant's name on the target
   and the role is created there; then the **switch**: one control transaction names the target in the
   registry (its trigger makes every replica drop the tenant's cache entry and pool) and records the
   freeze's length (ms) on the move. Requests meanwhile get 503 ``tenant_unavailable`` with Retry-After.
4. **Retire**: the source database is kept, renamed, for ``CARDVAULT_RESTORE_ROLLBACK_WINDOW`` (dropped by
   the restore upkeep like a database a restore replaced).

A failure before the switch undoes the move (the copy and everything the move made go, writes resume on
the source) and raises ``MoveFailed`` (503 ``move_failed``, Retry-After; a ``CardVaultError`` such as
``MoveBusy`` as it is); after it, the move is finished. ``settle`` decides from the registry alone (the tenant's
server), so the same code settles a crashed move later: the move upkeep (``upkeep``, a leader job and
``cardvault tenants move-upkeep``) finds its operation ``running`` with no lock held.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid

from controlplane.backups import restore_catalog
from controlplane.backups import restore_repository as retired_repository
from controlplane.db import AsyncConn
from controlplane.errors import (
    CardVaultError,
    OperationFailed,
    OperationInProgress,
    ServerNotFound,
    ValidationFailed,
)
from controlplane.fleet.models import Server, ServerStatus
from controlplane.moves import catalog
from controlplane.moves import repository as repo
from controlplane.moves.models import (
    Move,
    MoveFailed,
    MovePlan,
    MoveRefused,
    MoveState,
    channel_name,
    retired_name,
    staging_name,
)
from controlplane.moves.phases import Phases
from controlplane.moves.slots import TargetSlot
from controlplane.platform import Platform
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import OperationKind, OperationState
from controlplane.provisioning.service import TenantService
from controlplane.provisioning.steps import Steps
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.usage.fill import FillPolicy, fleet_fill, tenant_loads

log = logging.getLogger(__name__)

#: Statuses a tenant may be moved in (a suspended one stays locked out on the target).
MOVABLE_STATUSES = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})


class MoveService:
    """Moves of tenants between servers (CLI and admin API alike), and the upkeep of interrupted ones."""

    def __init__(self, platform: Platform, tenants: TenantService) -> None:
        self._p = platform
        self._tenants = tenants

    async def tenant(self, slug: str) -> Tenant:
        return await self._tenants.get(slug)

    async def moves(self, slug: str) -> list[Move]:
        """The tenant's moves, newest first."""
        tenant = await self._tenants.get(slug)
        async with self._p.control.connection() as conn:
            return await repo.for_tenant(conn, tenant.id)

    async def move(self, slug: str, to: str, *, requested_by: str | None = None) -> Move:
        """Move the tenant ``slug`` to the server named ``to`` (see the module docstring); the finished move."""
        async with self._tenants.locked_slug(slug) as (conn, tenant):
            await self._settle_tenant(conn, tenant.id)
            try:
                target = await self._p.fleet.get(conn, to)
            except ServerNotFound:  # the request names it: the request is wrong, not the path
                raise ValidationFailed(f"no server named {to!r} to move {slug!r} to", server=to) from None
            await self._refuse(conn, tenant, target)
            short = secrets.token_hex(4)
            async with conn.transaction():
                move_id = await repo.next_id(conn)
                plan = MovePlan(
                    move_id=move_id,
                    tenant_id=tenant.id,
                    source_server_id=tenant.server_id,
                    target_server_id=target.id,
                    database=tenant.database_name,
                    role=tenant.role_name,
                    staging=staging_name(tenant.id, short),
                    retired=retired_name(tenant.id, short),
                    channel=channel_name(short),
                    login=tenant.status is TenantStatus.ACTIVE,
                )
                op_id = await ledger.start(conn, tenant.id, tenant.slug, OperationKind.MOVE, plan.to_params())
                await repo.insert(
                    conn,
                    move_id=move_id,
                    tenant_id=tenant.id,
                    operation_id=op_id,
                    source=(tenant.server_id, tenant.server_name),
                    target=(target.id, target.name),
                    requested_by=requested_by,
                )
            await self._run(conn, tenant, op_id, plan)
            found = await repo.get(conn, move_id)
        assert found is not None
        return found

    async def _refuse(self, conn: AsyncConn, tenant: Tenant, target: Server) -> None:
        """``MoveRefused`` when the move may not start (nothing is changed)."""
        if tenant.status not in MOVABLE_STATUSES:
            raise MoveRefused(
                f"only an active or suspended tenant is moved; {tenant.slug!r} is {tenant.status.value}",
                status=tenant.status.value,
            )
        if target.id == tenant.server_id:
            raise MoveRefused(f"tenant {tenant.slug!r} is on server {target.name!r} already", server=target.name)
        if target.status is not ServerStatus.ACTIVE:
            raise MoveRefused(
                f"server {target.name!r} is {target.status.value}: it takes no tenants", server=target.name
            )
        if why := await _no_room(conn, FillPolicy.of(self._p.settings.moves), tenant, target):
            raise MoveRefused(f"server {target.name!r} is full for {tenant.slug!r}: {why}", server=target.name)
        async with self._p.fleet.admin(conn, tenant.server_id) as source:
            level = await catalog.wal_level(source)
            source_version = await restore_catalog.server_version(source)
        if level != "logical":
            raise MoveRefused(
                f"server {tenant.server_name!r} has wal_level={level}: an online move needs wal_level=logical",
                server=tenant.server_name,
            )
        async with self._p.fleet.admin(conn, target.id) as admin:
            target_version = await restore_catalog.server_version(admin)
        if target_version // 10000 < source_version // 10000:
            raise MoveRefused(
                f"server {target.name!r} runs an older PostgreSQL ({target_version // 10000}) than the tenant's "
                f"({source_version // 10000})",
                server=target.name,
            )

    # -- running and settling -------------------------------------------------------------------------

    async def _run(self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: MovePlan) -> None:
        steps = Steps(self._p)
        slot = TargetSlot(self._p, conn, plan.target_server_id, label=f"move #{plan.move_id} of {tenant.slug}")
        try:
            await self._attempt(conn, tenant, op_id, plan, steps, slot)
        finally:
            await slot.release()  # the subscription is gone: moved, or undone

    async def _attempt(
        self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: MovePlan, steps: Steps, slot: TargetSlot
    ) -> None:
        try:
            await self._steps(conn, tenant, op_id, plan, steps, slot)
        except Exception as exc:
            failed_step = steps.current
            try:
                finished = await self._settle(conn, tenant.id, op_id, plan, steps, f"{failed_step}: {exc}")
            except Exception as settle_exc:
                log.error("move #%d of %s: settling failed (%s); the move upkeep will",
                          plan.move_id, tenant.slug, settle_exc)  # fmt: skip
                raise OperationFailed(
                    f"move failed at step {failed_step}: {exc}; it is finished or undone by the move upkeep",
                    step=failed_step,
                ) from exc
            if not finished:
                if isinstance(exc, CardVaultError):
                    raise
                raise MoveFailed(
                    f"move failed at step {failed_step}: {exc}; it was undone, the tenant stays on "
                    f"{tenant.server_name!r}",
                    step=failed_step,
                ) from exc

    async def _steps(
        self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: MovePlan, steps: Steps, slot: TargetSlot
    ) -> None:
        phases, timeouts = Phases(self._p, conn, plan), self._p.settings.moves
        await steps.run("create_database", phases.create_database)
        await steps.run("schema", phases.schema)
        await steps.run("slot", lambda: slot.take(timeouts.sync_timeout))
        await steps.run("subscribe", phases.subscribe)
        await steps.run("sync", lambda: phases.caught_up(timeouts.sync_timeout, initial=True))
        frozen_at = time.perf_counter()  # the first write refused: the freeze starts here
        await steps.run("freeze", lambda: phases.freeze(timeouts.freeze_timeout))
        await retired_repository.notify_tenant_changed(conn, tenant.id)  # every replica closes the pool
        await steps.run("catch_up", lambda: phases.caught_up(timeouts.freeze_timeout, initial=False))
        rows = await steps.run("verify", phases.verify)
        await steps.run("detach", phases.detach)
        await steps.run("rename", phases.rename)

        async def switch() -> float:
            async with conn.transaction():
                await repo.switch_server(conn, tenant.id, plan.target_server_id)
                freeze_ms = round((time.perf_counter() - frozen_at) * 1000, 2)
                await repo.record_cutover(conn, plan.move_id, freeze_ms=freeze_ms, rows=rows)
            return freeze_ms

        freeze_ms = await steps.run("switch", switch)
        log.info("tenant %s moved (move #%d): writes frozen for %.1f ms, %d rows verified; steps %s",
                 tenant.slug, plan.move_id, freeze_ms, rows, steps.timings)  # fmt: skip
        await self._finish_after_switch(conn, op_id, plan, steps)

    async def _finish_after_switch(self, conn: AsyncConn, op_id: int, plan: MovePlan, steps: Steps) -> None:
        phases = Phases(self._p, conn, plan)
        await steps.run("unpublish", phases.unpublish)
        async with conn.transaction():
            await steps.run("retire", phases.retire)
            await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=steps.timings)
            await repo.finish(conn, plan.move_id, MoveState.SUCCEEDED)

    async def _settle(
        self, conn: AsyncConn, tenant_id: uuid.UUID, op_id: int, plan: MovePlan, steps: Steps, error: str
    ) -> bool:
        """Finish the move if the registry names the target (True), else undo it (False). Idempotent; the
        caller holds the tenant's lock."""
        failed_step = steps.current
        tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is not None and tenant.server_id == plan.target_server_id:
            await self._finish_after_switch(conn, op_id, plan, steps)
            log.warning("move #%d of %s finished after %s", plan.move_id, tenant.slug, error)
            return True
        reopen = tenant is not None and tenant.status is TenantStatus.ACTIVE
        await steps.run("undo", lambda: Phases(self._p, conn, plan).undo(reopen=reopen))
        async with conn.transaction():
            if tenant is not None:
                await retired_repository.notify_tenant_changed(conn, tenant.id)  # its pools were closed
            await ledger.finish(
                conn, op_id, OperationState.ROLLED_BACK, steps=steps.timings, step=failed_step, error=error
            )
            await repo.finish(conn, plan.move_id, MoveState.ROLLED_BACK, error)
        log.warning("move #%d of %s undone: %s", plan.move_id, tenant_id, error)
        return False

    async def _settle_interrupted(self, conn: AsyncConn, op_id: int) -> str:
        op = await ledger.get(conn, op_id)
        if op is None or op.state is not OperationState.RUNNING:
            return "already settled"
        await ledger.retry(conn, op_id)
        steps = Steps(self._p)
        steps.current = op.step
        finished = await self._settle(conn, op.tenant_id, op_id, MovePlan.from_params(op.params), steps, "interrupted")
        return "finished" if finished else "rolled back"

    async def _settle_tenant(self, conn: AsyncConn, tenant_id: uuid.UUID) -> None:
        """Settle the tenant's interrupted moves first (the caller holds its lock, so none is live)."""
        for op in await ledger.for_tenant(conn, tenant_id, limit=10):
            if op.kind is OperationKind.MOVE and op.state is OperationState.RUNNING:
                await self._settle_interrupted(conn, op.id)

    async def upkeep(self) -> str:
        """Moves left ``running`` by a process that died, each finished or undone: what was done (the leader
        job ``move_upkeep`` and ``cardvault tenants move-upkeep``)."""
        async with self._p.control.connection() as conn:
            running = await repo.running(conn)
        outcomes = []
        for op_id, tenant_id in running:
            try:
                async with self._tenants.locked(tenant_id) as conn:
                    outcome = await self._settle_interrupted(conn, op_id)
                outcomes.append(f"move operation #{op_id}: {outcome}")
            except OperationInProgress:
                continue  # a live process runs it
            except Exception as exc:  # one move that cannot be settled now does not stop the others
                log.warning("move operation #%d not settled: %s", op_id, exc)
                outcomes.append(f"move operation #{op_id}: not settled ({exc})")
        return "; ".join(outcomes) or "no interrupted move"


async def _no_room(conn: AsyncConn, policy: FillPolicy, tenant: Tenant, target: Server) -> str | None:
    """Why ``target`` cannot take ``tenant``, or None: the target is full (``usage.fill``'s definition), or
    would be with the tenant's projected bytes added. Nothing is computed when no limit is set."""
    if not policy.max_tenants and not policy.limits_bytes:
        return None
    fill = next((f for f in await fleet_fill(conn, policy) if f.id == target.id), None)
    if fill is None:
        return None
    if fill.full:
        return ", ".join(fill.full_reasons)
    if policy.limits_bytes:
        mine = next((t for t in await tenant_loads(conn) if t.tenant_id == tenant.id), None)
        projected = fill.projected_bytes + (mine.projected(policy.horizon_days) if mine is not None else 0)
        if projected >= policy.full_ratio * policy.capacity_bytes:
            return (
                f"with the tenant it is projected to hold {round(projected)} bytes within {policy.horizon_days} "
                f"days, {projected / policy.capacity_bytes:.0%} of CARDVAULT_SERVER_CAPACITY_BYTES"
            )
    return None
