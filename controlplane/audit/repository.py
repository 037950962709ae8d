"""SQL of the audit trails: ``audit_log`` in each tenant database, ``platform_audit`` in the control database."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from controlplane.audit.models import AuditContext
from controlplane.db import AsyncConn


def _details(ctx: AuditContext, details: dict[str, Any] | None) -> Jsonb:
    out = dict(details or {})
    if ctx.actor_label:
        out.setdefault("actor_label", ctx.actor_label)
    if ctx.impersonator:
        out.setdefault("impersonator", ctx.impersonator)
    return Jsonb(out)


async def record_tenant(
    conn: AsyncConn,
    ctx: AuditContext,
    action: str,
    entity: str | None = None,
    entity_id: object = None,
    details: dict[str, Any] | None = None,
) -> None:
    """One row in the tenant's ``audit_log``, inside the caller's transaction (so it commits with the write)."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, entity, entity_id, source_address, request_id, details)"
        " VALUES (%s, %s, %s, %s, %s::inet, %s, %s)",
        (
            ctx.actor,
            action,
            entity,
            None if entity_id is None else str(entity_id),
            ctx.source_address,
            ctx.request_id,
            _details(ctx, details),
        ),
    )
