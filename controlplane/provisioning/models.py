"""Lifecycle types: operations in the ledger and the reconciler's report."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import msgspec


class OperationKind(enum.StrEnum):
    PROVISION = "provision"
    SUSPEND = "suspend"
    RESUME = "resume"
    UPDATE = "update"
    DELETE = "delete"
    PURGE = "purge"
    MIGRATE = "migrate"
    REPAIR = "repair"
    #: The tenant switched to a database restored from a backup (``controlplane.backups``).
    RESTORE = "restore"
    #: The tenant's database moved to another server (``controlplane.moves``).
    MOVE = "move"


class OperationState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class Operation(msgspec.Struct, kw_only=True):
    id: int
    tenant_id: uuid.UUID
    tenant_slug: str
    kind: OperationKind
    state: OperationState
    step: str | None
    attempts: int
    error: str | None
    params: dict[str, Any]
    steps: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime | None


class Finding(msgspec.Struct, kw_only=True):
    """One thing the reconciler found, and what it did about it."""

    kind: str
    server: str
    subject: str
    detail: str
    action: str = "reported"


class ReconcileReport(msgspec.Struct, kw_only=True):
    findings: list[Finding] = msgspec.field(default_factory=list)
    fixed: bool = False

    @property
    def clean(self) -> bool:
        return not self.findings


class SpareState(enum.StrEnum):
    """Where a spare database is in its life (``spare_databases.state``)."""

    #: Its row is written; its database and role are being made (or were, by a process that died).
    CREATING = "creating"
    #: Complete, at ``schema_revision``: a signup may claim it.
    READY = "ready"
    #: Being dropped (recycled, in excess, its server draining); never claimed again.
    DROPPING = "dropping"


class Spare(msgspec.Struct, kw_only=True):
    """A pre-created tenant database and its login role, not yet anybody's."""

    database_name: str
    server_id: uuid.UUID
    role_name: str
    role_password_encrypted: str
    schema_revision: str
    state: SpareState
    created_at: datetime


class RefillOutcome(msgspec.Struct, kw_only=True):
    """What one refill did on one server."""

    server: str
    target: int
    ready: int = 0
    created: int = 0
    #: Ready spares dropped because the schema head moved (recycled), or because there were too many.
    dropped: int = 0
    #: Left over by a refill that died (``creating`` / ``dropping`` rows) and dropped now.
    cleared: int = 0
    #: Why this server was skipped or stopped early (another refill holds it, an error), if it was.
    note: str = ""

    def describe(self) -> str:
        text = f"{self.server}: {self.ready}/{self.target} ready"
        counts = {"created": self.created, "dropped": self.dropped, "cleared": self.cleared}
        changes = [f"{n} {what}" for what, n in counts.items() if n]
        if changes:
            text += f" ({', '.join(changes)})"
        return f"{text}; {self.note}" if self.note else text


class SpareClaim(msgspec.Struct, frozen=True, kw_only=True):
    """The spare a provisioning claimed, as its ledger params keep it (``params["spare"]``)."""

    name: str
    revision: str

    def to_params(self) -> dict[str, str]:
        return {"name": self.name, "revision": self.revision}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SpareClaim | None:
        spare = params.get("spare")
        if not isinstance(spare, dict):
            return None
        return cls(name=str(spare["name"]), revision=str(spare["revision"]))
