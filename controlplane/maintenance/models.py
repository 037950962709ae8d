"""What health checks and maintenance report."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from controlplane.errors import Conflict

#: What ``maintain`` runs: ``VACUUM (ANALYZE)`` or ``ANALYZE``.
Maintenance = Literal["analyze", "vacuum"]


class ExtensionMissing(Conflict):
    """``pg_stat_statements`` is not installed (or not loaded) on the tenant's server."""

    code = "extension_missing"


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's health check: a fresh connection as its role, then ``SELECT 1``, both timed."""

    tenant: str
    ok: bool
    connect_ms: float | None
    query_ms: float | None
    error: str | None = None


class FleetHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One round of health checks over the active tenants; replaced whole after each round."""

    finished_at: datetime
    duration_seconds: float
    results: tuple[Health, ...]


class SlowQuery(msgspec.Struct, frozen=True, kw_only=True):
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int


class MaintenanceResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    action: str
    ok: bool
    seconds: float
    error: str | None = None
