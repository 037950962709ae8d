"""Recording platform actions and reading audit trails page by page.

``platform_action(control, ctx, action, ...)`` wraps one platform action: whatever the block raises is recorded
as ``failed`` (with the error code) and re-raised unchanged; a block that returns is recorded as
``succeeded``. The row is written after the action, in its own statement on the control pool, so it
never takes part in (or holds locks of) the action's transaction. A failure to write it is logged and
swallowed: it must never hide the action's own error, nor turn a committed action into an error.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from psycopg_pool import AsyncConnectionPool

from controlplane.audit import repository
from controlplane.audit.models import AuditQuery, Outcome, PlatformAuditPage, TenantAuditPage
from controlplane.context import AuditContext
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, ValidationFailed
from controlplane.paging import AUDIT_PAGES, decode_cursor, encode_cursor
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN, Tenant

log = logging.getLogger(__name__)
T = TypeVar("T", bound=Tenant | None)

#: Seconds the audit write may wait for a control connection (it must not hang the response).
AUDIT_CONNECT_TIMEOUT = 5.0
#: Tenant fields whose change an audited action records (old and new value).
_TRACKED = ("slug", "name", "status", "subscription_tier")


class PlatformAction:
    """What one audited platform action records. The block fills in what it learns (``tenant``,
    ``details``) before it ends."""

    def __init__(
        self,
        action: str,
        *,
        tenant_slug: str | None,
        entity: str | None,
        entity_id: object,
        details: Mapping[str, Any] | None,
    ) -> None:
        self.action = action
        self.tenant_id: uuid.UUID | None = None
        self.tenant_slug = tenant_slug
        self.entity = entity
        self.entity_id = entity_id
        self.details: dict[str, Any] = dict(details or {})
        #: The tenant as it was before the action (looked up when the action names an existing one).
        self.before: Tenant | None = None
        self._after: Tenant | None = None

    @property
    def tenant(self) -> Tenant | None:
        """The tenant as the action left it (set with ``result``)."""
        return self._after

    def result(self, tenant: T) -> T:
        """Record ``tenant`` as the action left it (its id goes into the row, what changed into the
        details) and return it: ``return audit.result(await tenants.suspend(slug))``."""
        self._after = tenant
        if tenant is not None:
            self._set_tenant(tenant.id, tenant.slug if self.tenant_slug is None else self.tenant_slug)
        return tenant

    def _set_tenant(self, tenant_id: uuid.UUID, slug: str) -> None:
        self.tenant_id = tenant_id
        self.tenant_slug = slug
        if self.entity in (None, "tenant"):
            self.entity, self.entity_id = "tenant", tenant_id

    def changes(self) -> dict[str, list[Any]]:
        """[old, new] of every tracked field the action changed (both sides known)."""
        if self.before is None or self._after is None:
            return {}
        out: dict[str, list[Any]] = {}
        for field in _TRACKED:
            old, new = getattr(self.before, field), getattr(self._after, field)
            if old != new:
                out[field] = [str(old), str(new)]
        return out


def error_details(exc: BaseException) -> dict[str, Any]:
    """What a failed row says about the error: its stable code (and status) for expected ones."""
    if isinstance(exc, CardVaultError):
        return {"error": exc.code, "status": exc.status}
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):  # a framework error raised inside the block (validation, say)
        return {"error": "http_error", "status": status}
    return {"error": "internal_error", "exception": type(exc).__name__}


@asynccontextmanager
async def platform_action(
    control: AsyncConnectionPool[AsyncConn],
    ctx: AuditContext,
    action: str,
    *,
    slug: str | None = None,
    existing: bool = True,
    entity: str | None = None,
    entity_id: object = None,
    details: Mapping[str, Any] | None = None,
) -> AsyncIterator[PlatformAction]:
    """Record the block as the platform action ``action`` of ``ctx``'s actor (see the module doc).

    ``slug`` names the tenant acted on; when ``existing`` (all but a create) it is looked up first, so
    the row carries the tenant's id even when the action fails or removes it.
    """
    record = PlatformAction(action, tenant_slug=slug, entity=entity, entity_id=entity_id, details=details)
    if slug is not None and existing and SLUG_PATTERN.fullmatch(slug):
        record.before = await _lookup(control, slug)
        if record.before is not None:
            record._set_tenant(record.before.id, slug)
    try:
        yield record
    except Exception as exc:
        record.details.update(error_details(exc))
        await _write(control, ctx, record, Outcome.FAILED)
        raise
    changes = record.changes()
    if changes:
        record.details.setdefault("changes", changes)
    await _write(control, ctx, record, Outcome.SUCCEEDED)


async def _lookup(control: AsyncConnectionPool[AsyncConn], slug: str) -> Tenant | None:
    try:
        async with control.connection(timeout=AUDIT_CONNECT_TIMEOUT) as conn:
            return await registry.get_by_slug(conn, slug)
    except Exception:  # the action will meet the same trouble and say so; the row goes without an id
        log.warning("platform audit: could not look tenant %r up", slug, exc_info=True)
        return None


async def _write(
    control: AsyncConnectionPool[AsyncConn], ctx: AuditContext, record: PlatformAction, outcome: Outcome
) -> None:
    try:
        async with control.connection(timeout=AUDIT_CONNECT_TIMEOUT) as conn:
            await repository.record_platform(
                conn,
                ctx,
                record.action,
                tenant_id=record.tenant_id,
                tenant_slug=record.tenant_slug,
                entity=record.entity,
                entity_id=record.entity_id,
                outcome=outcome,
                details=record.details,
            )
    except Exception:
        # Loud, but not the caller's problem: the action itself has committed (or failed on its own).
        log.error(
            "platform audit: could not record %s (%s) by %s, request %s",
            record.action,
            outcome.value,
            ctx.actor,
            ctx.request_id,
            exc_info=True,
        )


# -- reading ----------------------------------------------------------------------------------------


#: ``at`` of an audit cursor: a time with its offset.
_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


def _aware(value: datetime | None) -> datetime | None:
    """An ISO time without an offset is taken as UTC (not as the database session's time zone)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def audit_query(
    kind: str,
    *,
    actor: str | None = None,
    action: str | None = None,
    entity: str | None = None,
    entity_id: str | None = None,
    tenant_slug: str | None = None,
    outcome: Outcome | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int,
) -> AuditQuery:
    """The validated query of one page of the listing ``kind`` (``ValidationFailed`` on bad filters)."""
    if action is not None and "*" in action[:-1]:
        raise ValidationFailed("action is a name, or a prefix ending in '*' (tenant.*); '*' only at the end")
    if not 1 <= limit <= AUDIT_PAGES.maximum:
        raise ValidationFailed(f"limit must be 1..{AUDIT_PAGES.maximum}")
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and since > until:
        raise ValidationFailed("since must not be after until")
    return AuditQuery(
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        tenant_slug=tenant_slug,
        outcome=outcome,
        since=since,
        until=until,
        before=decode_cursor(cursor, kind, _AwareTime) if cursor is not None else None,
        limit=limit,
    )


#: ``kind`` of the two listings (a cursor of one is refused by the other).
TENANT_LISTING = "tenant_audit"
PLATFORM_LISTING = "platform_audit"


async def tenant_page(conn: AsyncConn, query: AuditQuery) -> TenantAuditPage:
    """One page of a tenant's ``audit_log`` (``query`` from ``audit_query(TENANT_LISTING, ...)``)."""
    rows = await repository.list_tenant(conn, msgspec.structs.replace(query, limit=query.limit + 1))
    more, rows = len(rows) > query.limit, rows[: query.limit]
    last = rows[-1] if more else None
    return TenantAuditPage(items=rows, next_cursor=encode_cursor(TENANT_LISTING, last.at, last.id) if last else None)


async def platform_page(conn: AsyncConn, query: AuditQuery) -> PlatformAuditPage:
    """One page of ``platform_audit`` (``query`` from ``audit_query(PLATFORM_LISTING, ...)``)."""
    rows = await repository.list_platform(conn, msgspec.structs.replace(query, limit=query.limit + 1))
    more, rows = len(rows) > query.limit, rows[: query.limit]
    last = rows[-1] if more else None
    return PlatformAuditPage(
        items=rows, next_cursor=encode_cursor(PLATFORM_LISTING, last.at, last.id) if last else None
    )
