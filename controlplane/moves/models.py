"""Move types: the plan a move keeps in the ledger, the move's record, and why a move is refused."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import msgspec

from controlplane.errors import Conflict, OperationFailed


class MoveState(enum.StrEnum):
    """Where a move is (``tenant_moves.state`` allows exactly these values)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class MoveRefused(Conflict):
    """The move cannot start: the target lacks room or takes no tenants, it is the tenant's own server,
    or the tenant is not active. Nothing was changed."""

    code = "move_refused"


class MoveBusy(Conflict):
    """Every move slot of the target server stayed taken by other moves for as long as the move could wait
    (``CARDVAULT_MOVE_SYNC_TIMEOUT``): the move was undone, nothing changed; retry after ``retry_after``."""

    code = "move_busy"

    def __init__(self, detail: str, *, retry_after: int = 60, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class MoveFailed(OperationFailed):
    """A step of the move failed (a timeout, a lost server, a statement canceled under contention) and the
    move was undone: the tenant stays served from its server, nothing changed. 503 with Retry-After (the
    ``detail`` and ``step`` say where and why); other ``OperationFailed`` keep their 500."""

    status = 503
    code = "move_failed"

    def __init__(self, detail: str, *, retry_after: int = 60, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class MovePlan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a move (and the settling of an interrupted one) needs, kept in its ledger params.

    Names are derived from the tenant id and a short random suffix, so every object the move makes on
    either server is known from the plan alone, whichever process settles it.
    """

    move_id: int
    tenant_id: uuid.UUID
    source_server_id: uuid.UUID
    target_server_id: uuid.UUID
    #: The tenant's database (same name on both servers once the move is done).
    database: str
    role: str
    #: Where the copy is made on the target until the cutover renames it: ``t_<id hex>_m<short>``.
    staging: str
    #: What the source database is renamed to after the cutover (kept for the rollback window).
    retired: str
    #: Publication (source), subscription and replication slot (target / source): one name.
    channel: str
    #: The tenant role may log in on the target (the tenant was active, not suspended, at the start).
    login: bool = True

    def to_params(self) -> dict[str, Any]:
        params: dict[str, Any] = msgspec.to_builtins(self)
        return params

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> MovePlan:
        return msgspec.convert(params, cls)


def staging_name(tenant_id: uuid.UUID, short: str) -> str:
    """``t_<id hex>_m<short>``: not a tenant database's name (the reconciler's ``t_<32 hex>`` pattern does
    not match it), and dropped with the tenant's other databases by name prefix."""
    return f"t_{tenant_id.hex}_m{short}"


def retired_name(tenant_id: uuid.UUID, short: str) -> str:
    """``t_<id hex>_p<short>``: the name a restore gives a replaced database, so the restore upkeep's
    ``drop_due`` drops it after the rollback window like any other retired database."""
    return f"t_{tenant_id.hex}_p{short}"


def channel_name(short: str) -> str:
    """Publication, subscription and slot name (lowercase letters, digits and ``_`` only)."""
    return f"cardvault_move_{short}"


class Move(msgspec.Struct, kw_only=True):
    """One move of a tenant to another server, as ``GET /admin/tenants/{slug}/moves`` lists it."""

    id: int
    tenant_id: uuid.UUID
    operation_id: int
    from_server: str
    to_server: str
    method: str
    state: MoveState
    #: Milliseconds during which the tenant's writes were refused (from the freeze to the registry switch).
    freeze_ms: float | None
    #: Rows counted equal on both servers at the cutover.
    rows_verified: int | None
    error: str | None
    requested_by: str | None
    started_at: datetime
    finished_at: datetime | None
