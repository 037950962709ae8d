"""Types of drains and rebalances: what was queued, what stays, the progress of a drain, a move's outcome,
and the queue moves go through (``MoveQueue``, implemented by ``controlplane.tasks.moves``)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Protocol

import msgspec

from controlplane.fleet.models import ServerStatus
from controlplane.moves.balance import Proposal
from controlplane.usage.fill import ServerFill

#: Moves one rebalance proposes at most unless told otherwise.
DEFAULT_LIMIT = 20


class MoveQueue(Protocol):
    """The task queue as moves use it (one ``moves.move_tenant`` task per tenant)."""

    async def enqueue_move(self, tenant_id: uuid.UUID, *, source: uuid.UUID, to: str, requested_by: str | None) -> bool:
        """Queue the tenant's move off ``source`` to ``to``; False when a move of the tenant already waits."""
        ...

    async def pending_moves(self, tenant_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``tenant_ids`` whose move task waits or runs."""
        ...


class QueuedMove(msgspec.Struct, kw_only=True):
    slug: str
    tenant_id: uuid.UUID
    from_server: str
    to_server: str
    #: False when a move of the tenant was already waiting (that one does the work).
    queued: bool


class Unmoved(msgspec.Struct, kw_only=True):
    slug: str
    tenant_id: uuid.UUID
    reason: str


class DrainReport(msgspec.Struct, kw_only=True):
    """``cardvault servers drain`` / ``POST /admin/servers/{name}/drain?move_tenants=true``."""

    server: str
    status: ServerStatus
    #: When the drain was asked (moves started since are its moves).
    started_at: datetime
    queued: list[QueuedMove]
    not_moved: list[Unmoved]


class MoveOutcome(msgspec.Struct, kw_only=True):
    """How a queued move ended: ``moved``, ``failed`` (undone: the tenant stays), ``not moved`` (refused or
    no room when it ran), or ``pending`` (its task still waits or runs)."""

    slug: str
    tenant_id: uuid.UUID
    outcome: str
    server: str
    freeze_ms: float | None = None
    error: str | None = None


class TenantLeft(msgspec.Struct, kw_only=True):
    slug: str
    tenant_id: uuid.UUID
    status: str
    #: A move task of the tenant waits or runs.
    move_pending: bool
    #: The error of its last move, if that one failed.
    last_error: str | None = None


class DrainProgress(msgspec.Struct, kw_only=True):
    """``GET /admin/servers/{name}/drain``: the tenants still on the server and their moves."""

    server: str
    status: ServerStatus
    tenants_left: int
    moves_pending: int
    tenants: list[TenantLeft]


class RebalancePlan(msgspec.Struct, kw_only=True):
    """``cardvault servers rebalance`` / ``/admin/fleet/rebalance``: the servers' fill as read, and the moves."""

    generated_at: datetime
    servers: list[ServerFill]
    proposals: list[Proposal]
    #: With ``apply``: the moves queued (else empty).
    queued: list[QueuedMove]
