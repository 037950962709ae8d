"""How audit rows are read back: entries, filters, pages (who acted is ``controlplane.context.AuditContext``)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import msgspec

from controlplane.paging import AUDIT_PAGES


class Outcome(enum.StrEnum):
    """How a platform action ended (a refused or failed attempt is recorded too)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class TenantAuditEntry(msgspec.Struct, kw_only=True):
    """One row of a tenant's ``audit_log``."""

    id: int
    at: datetime
    actor: str | None
    action: str
    entity: str | None
    entity_id: str | None
    source_address: str | None
    request_id: str | None
    details: dict[str, Any]


class PlatformAuditEntry(msgspec.Struct, kw_only=True):
    """One row of ``platform_audit``."""

    id: int
    at: datetime
    actor: str
    action: str
    tenant_id: uuid.UUID | None
    tenant_slug: str | None
    entity: str | None
    entity_id: str | None
    outcome: Outcome
    source_address: str | None
    request_id: str | None
    details: dict[str, Any]


class AuditQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of an audit listing (all optional, combined with AND) and its keyset position.

    ``action`` is exact, or a prefix when it ends with ``*`` (``tenant.*``). ``since`` is inclusive,
    ``until`` exclusive. ``tenant_slug`` and ``outcome`` apply to the platform audit only, ``entity``
    and ``entity_id`` to a tenant's. Rows come newest first, ordered by (at, id).
    """

    actor: str | None = None
    action: str | None = None
    entity: str | None = None
    entity_id: str | None = None
    tenant_slug: str | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: (at, id) of the last row of the previous page.
    before: tuple[datetime, int] | None = None
    limit: int = AUDIT_PAGES.default


class TenantAuditPage(msgspec.Struct):
    items: list[TenantAuditEntry]
    #: Pass as ``cursor`` (with the same filters) for the next page; null on the last page.
    next_cursor: str | None


class PlatformAuditPage(msgspec.Struct):
    items: list[PlatformAuditEntry]
    #: Pass as ``cursor`` (with the same filters) for the next page; null on the last page.
    next_cursor: str | None
