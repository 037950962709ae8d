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
