"""What the usage collectors measure, and the in-memory snapshot that ``/metrics`` and the admin API read.

The snapshot is replaced whole after each collection (readers never see half a cycle), so a scrape
costs the same whatever the number of tenants and never queries a database.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

#: ``tenant_storage_usage.storage_type`` of a tenant's retained backups (written by ``controlplane.backups``):
#: shown in its storage, never counted in the ``storage_bytes`` quota.
BACKUPS_STORAGE_TYPE = "backups"


class TableUsage(msgspec.Struct, frozen=True, kw_only=True):
    table: str
    #: ``pg_total_relation_size`` (heap, indexes, TOAST).
    total_bytes: int
    #: Planner estimate (``pg_class.reltuples``; -1 = never analysed), never ``COUNT(*)``.
    row_estimate: int


class StorageUsage(msgspec.Struct, frozen=True, kw_only=True):
    bytes: int
    files: int


class TenantUsage(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: uuid.UUID
    slug: str
    tier: str
    status: str
    server: str
    #: ``pg_database_size`` of the tenant's database.
    database_bytes: int
    tables: tuple[TableUsage, ...] = ()
    #: Stored objects by kind (``image``, ``attachment``, ``export``, later ``backup``).
    storage: dict[str, StorageUsage] = msgspec.field(default_factory=dict)
    #: Exact counters of the tenant database (users, cards, storage_bytes) at the last table scan.
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    #: When the database size was read / when tables were last scanned (skipped while the size holds).
    measured_at: datetime
    tables_scanned_at: datetime | None = None


class ServerUsage(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    status: str
    tenants: int
    database_bytes: int
    connections: int
    max_connections: int


class CollectionStats(msgspec.Struct, frozen=True, kw_only=True):
    started_at: datetime
    duration_seconds: float
    tenants: int
    #: Tenants whose tables were scanned this cycle (the others had an unchanged database size).
    scanned: int
    failed: int
    #: Servers read this cycle / unreachable (their tenants count as failed).
    servers: int = 0
    failed_servers: int = 0
    #: Slugs of the failed tenants (database missing, unreachable or unreadable).
    failed_tenants: tuple[str, ...] = ()


class UsageSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    tenants: dict[uuid.UUID, TenantUsage] = msgspec.field(default_factory=dict)
    servers: dict[str, ServerUsage] = msgspec.field(default_factory=dict)
    last: CollectionStats | None = None
