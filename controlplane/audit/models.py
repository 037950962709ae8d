"""What audit rows carry and how they are read back: the request context, entries, filters, pages."""

from __future__ import annotations

import enum
import ipaddress
import uuid
from datetime import datetime
from typing import Any

import msgspec

from controlplane.errors import ValidationFailed

#: Rows per page of the audit listings: the default and the most one page may hold.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


def client_address(host: str | None) -> str | None:
    """``host`` if it is an IP address (what an ``inet`` column can hold), else None."""
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class AuditContext(msgspec.Struct, frozen=True, kw_only=True):
    """The request an audited action belongs to."""

    #: Stable actor id (``user:12``, ``api_key:3``, ``admin:<uuid>``, ``automation``, ``cli:<os user>``).
    actor: str
    #: Human label (email, key name) kept in the row's details.
    actor_label: str = ""
    #: For impersonation: ``admin:<uuid>`` of the super_admin behind the actor.
    impersonator: str | None = None
    source_address: str | None = None
    request_id: str | None = None


class Outcome(enum.StrEnum):
    """How a platform action ended (a refused or failed attempt is recorded too)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class InvalidCursor(ValidationFailed):
    """The pagination cursor is malformed or was issued by another listing."""

    code = "invalid_cursor"


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
    limit: int = DEFAULT_PAGE_SIZE


class TenantAuditPage(msgspec.Struct):
    items: list[TenantAuditEntry]
    #: Pass as ``cursor`` (with the same filters) for the next page; null on the last page.
    next_cursor: str | None


class PlatformAuditPage(msgspec.Struct):
    items: list[PlatformAuditEntry]
    #: Pass as ``cursor`` (with the same filters) for the next page; null on the last page.
    next_cursor: str | None
