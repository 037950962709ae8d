"""SQL of the audit trails: ``audit_log`` in each tenant database, ``platform_audit`` in the control database."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from controlplane.audit.models import (
    AuditQuery,
    Outcome,
    PlatformAuditEntry,
    TenantAuditEntry,
)
from controlplane.context import AuditContext
from controlplane.db import AsyncConn

#: Longest text kept in a column of an audit row (a slug or id as a client sent it, say).
_MAX_TEXT = 200


def _text(value: object) -> str | None:
    """``value`` as text an audit column can hold: PostgreSQL text has no NUL, and rows stay small."""
    if value is None:
        return None
    return str(value).replace("\x00", "\ufffd")[:_MAX_TEXT]


def _clean(value: Any) -> Any:
    """``value`` with every string NUL-free (jsonb refuses ``\\u0000``): details may echo client input."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _details(ctx: AuditContext, details: Mapping[str, Any] | None) -> Jsonb:
    out = dict(details or {})
    if ctx.actor_label:
        out.setdefault("actor_label", ctx.actor_label)
    if ctx.impersonator:
        out.setdefault("impersonator", ctx.impersonator)
    return Jsonb(_clean(out))


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


async def record_platform(
    conn: AsyncConn,
    ctx: AuditContext,
    action: str,
    *,
    tenant_id: uuid.UUID | None = None,
    tenant_slug: str | None = None,
    entity: str | None = None,
    entity_id: object = None,
    outcome: Outcome | str = Outcome.SUCCEEDED,
    details: Mapping[str, Any] | None = None,
) -> None:
    """One row in ``platform_audit`` (the caller owns the transaction; on the autocommit control pool
    the statement is its own)."""
    await conn.execute(
        "INSERT INTO platform_audit"
        " (actor, action, tenant_id, tenant_slug, entity, entity_id, outcome, source_address, request_id, details)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::inet, %s, %s)",
        (
            _text(ctx.actor),
            _text(action),
            tenant_id,
            _text(tenant_slug),
            _text(entity),
            _text(entity_id),
            Outcome(outcome).value,
            ctx.source_address,
            _text(ctx.request_id),
            _details(ctx, details),
        ),
    )


def _where(query: AuditQuery, *, platform: bool) -> tuple[sql.Composable, list[Any]]:
    conditions: list[sql.Composable] = []
    params: list[Any] = []

    def add(condition: str, *values: Any) -> None:
        conditions.append(sql.SQL(condition))
        params.extend(values)

    if query.actor is not None:
        add("actor = %s", query.actor)
    if query.action is not None:
        if query.action.endswith("*"):
            prefix = query.action[:-1]
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            add("action LIKE %s", escaped + "%")
        else:
            add("action = %s", query.action)
    if platform:
        if query.tenant_slug is not None:
            add("tenant_slug = %s", query.tenant_slug)
        if query.outcome is not None:
            add("outcome = %s", query.outcome.value)
    else:
        if query.entity is not None:
            add("entity = %s", query.entity)
        if query.entity_id is not None:
            add("entity_id = %s", query.entity_id)
    if query.since is not None:
        add("at >= %s", query.since)
    if query.until is not None:
        add("at < %s", query.until)
    if query.before is not None:
        add("(at, id) < (%s, %s)", *query.before)
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), params


async def list_tenant(conn: AsyncConn, query: AuditQuery) -> list[TenantAuditEntry]:
    """Up to ``query.limit`` rows of the tenant's ``audit_log`` matching the filters, newest first."""
    where, params = _where(query, platform=False)
    statement = sql.SQL(
        "SELECT id, at, actor, action, entity, entity_id, host(source_address) AS source_address, request_id,"
        " details FROM audit_log{} ORDER BY at DESC, id DESC LIMIT %s"
    ).format(where)
    cur = await conn.execute(statement, [*params, query.limit])
    return [TenantAuditEntry(**row) for row in await cur.fetchall()]


async def list_platform(conn: AsyncConn, query: AuditQuery) -> list[PlatformAuditEntry]:
    """Up to ``query.limit`` rows of ``platform_audit`` matching the filters, newest first."""
    where, params = _where(query, platform=True)
    statement = sql.SQL(
        "SELECT id, at, actor, action, tenant_id, tenant_slug, entity, entity_id, outcome,"
        " host(source_address) AS source_address, request_id, details"
        " FROM platform_audit{} ORDER BY at DESC, id DESC LIMIT %s"
    ).format(where)
    cur = await conn.execute(statement, [*params, query.limit])
    return [PlatformAuditEntry(**{**row, "outcome": Outcome(row["outcome"])}) for row in await cur.fetchall()]
