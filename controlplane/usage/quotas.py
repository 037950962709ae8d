"""Quotas as the platform manages them: effective limits, admin overrides, temporary expansions.

- **Effective limit** of a quota = its ``tenant_quotas.quota_limit`` (None: unlimited) plus every
  ``quota_expansions`` row of that tenant and quota whose ``expires_at`` is still ahead
  (``effective_limit``). Expired expansions stop counting by themselves; ``delete_expired_expansions``
  is the clean-up for a leader job. Enforcement, the API call limiter and ``alerts`` all use it.
- **Admin overrides**: ``parse_limits`` validates ``{quota_type: limit | None}``; the limits are
  written with ``registry.set_quotas`` (a later tier change resets them to the tier's defaults).

Callers own transactions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.errors import ValidationFailed
from controlplane.registry import repository as registry
from controlplane.registry.models import QuotaType

log = logging.getLogger(__name__)

#: Largest limit (and expansion) an admin may set: far below bigint, so sums never overflow.
MAX_LIMIT = 2**62
_BIGINT_MAX = 2**63 - 1


def _effective(one: bool) -> sql.Composed:
    """Every quota (of one tenant: ``%(tenant)s``) with its configured limit, usage, active expansion
    and effective limit (NULL: unlimited). Sums are numeric, capped to bigint."""
    return sql.SQL(
        """
        WITH expansion AS (
            SELECT tenant_id, quota_type, sum(extra) AS extra
              FROM quota_expansions
             WHERE expires_at > now() {expansion_filter}
             GROUP BY tenant_id, quota_type
        )
        SELECT q.tenant_id, q.quota_type, q.quota_limit, q.current_usage AS usage,
               LEAST(coalesce(x.extra, 0), {cap})::bigint AS extra,
               -- LEAST ignores NULLs: an unlimited quota must stay NULL, not become the cap
               CASE WHEN q.quota_limit IS NOT NULL
                    THEN LEAST(q.quota_limit + coalesce(x.extra, 0), {cap})::bigint END AS effective_limit
          FROM tenant_quotas q
          LEFT JOIN expansion x ON x.tenant_id = q.tenant_id AND x.quota_type = q.quota_type
         WHERE TRUE {quota_filter}
        """
    ).format(
        expansion_filter=sql.SQL("AND tenant_id = %(tenant)s" if one else ""),
        quota_filter=sql.SQL("AND q.tenant_id = %(tenant)s" if one else ""),
        cap=sql.Literal(_BIGINT_MAX),
    )


# Built once: the fleet-wide and the one-tenant variant (the latter uses the tenant's indexes).
EFFECTIVE = {False: _effective(False), True: _effective(True)}
#: Every tenant's quotas: tenant_id, quota_type, quota_limit, usage, extra, effective_limit (for joins).
EFFECTIVE_QUOTAS = EFFECTIVE[False]


class QuotaStatus(msgspec.Struct, kw_only=True):
    """One quota of one tenant as the platform sees it now."""

    quota: QuotaType
    #: The configured limit (tier default or admin override); None: unlimited.
    limit: int | None
    #: Extra allowance of active expansions.
    expansion: int
    #: ``limit + expansion``: what enforcement and alerts use.
    effective_limit: int | None
    #: As last measured by the collectors.
    usage: int
    #: ``usage / effective_limit`` (None when unlimited or the limit is 0).
    ratio: float | None
    #: The limit of the tenant's tier (what a tier change would set), when known.
    tier_limit: int | None = None


class Expansion(msgspec.Struct, kw_only=True):
    id: int
    quota: QuotaType
    extra: int
    reason: str
    expires_at: datetime
    created_at: datetime
    created_by: str


def ratio(usage: int, limit: int | None) -> float | None:
    return usage / limit if limit else None


def parse_limits(raw: Mapping[str, int | None]) -> dict[QuotaType, int | None]:
    """``{quota_type: limit | None}`` validated: known quota types, ``0 <= limit <= 2**62``."""
    if not raw:
        raise ValidationFailed("limits must name at least one quota")
    known = ", ".join(q.value for q in QuotaType)
    out: dict[QuotaType, int | None] = {}
    for name, limit in raw.items():
        try:
            quota = QuotaType(name)
        except ValueError:
            raise ValidationFailed(f"unknown quota type {name!r}; choose from {known}", quota=name) from None
        if limit is not None and (isinstance(limit, bool) or not 0 <= limit <= MAX_LIMIT):
            raise ValidationFailed(f"the {name} limit must be null (unlimited) or 0..{MAX_LIMIT}", quota=name)
        out[quota] = limit
    return out


# -- limits ------------------------------------------------------------------------------------------


async def effective_limit(conn: AsyncConn, tenant_id: uuid.UUID, quota: QuotaType) -> int | None:
    """The limit enforcement applies: configured limit plus active expansions (None: unlimited or no row).

    A drop-in for ``registry.get_quota_limit`` (same arguments, same meaning of None).
    """
    query = sql.SQL("SELECT effective_limit FROM ({}) e WHERE e.quota_type = %(quota)s").format(EFFECTIVE[True])
    cur = await conn.execute(query, {"tenant": tenant_id, "quota": quota.value})
    row = await cur.fetchone()
    return int(row["effective_limit"]) if row and row["effective_limit"] is not None else None


async def quota_status(conn: AsyncConn, tenant_id: uuid.UUID) -> list[QuotaStatus]:
    """Every quota of the tenant with usage, expansion, effective limit and ratio."""
    cur = await conn.execute(sql.SQL("{} ORDER BY q.quota_type").format(EFFECTIVE[True]), {"tenant": tenant_id})
    return [
        QuotaStatus(
            quota=QuotaType(r["quota_type"]),
            limit=r["quota_limit"],
            expansion=int(r["extra"]),
            effective_limit=r["effective_limit"],
            usage=int(r["usage"]),
            ratio=ratio(int(r["usage"]), r["effective_limit"]),
        )
        for r in await cur.fetchall()
    ]


async def effective_limits(conn: AsyncConn) -> dict[uuid.UUID, dict[str, int | None]]:
    """Every tenant's effective limits by quota name, in one query."""
    cur = await conn.execute(EFFECTIVE[False])
    out: dict[uuid.UUID, dict[str, int | None]] = {}
    for r in await cur.fetchall():
        out.setdefault(r["tenant_id"], {})[r["quota_type"]] = r["effective_limit"]
    return out


async def set_limits(conn: AsyncConn, tenant_id: uuid.UUID, limits: Mapping[QuotaType, int | None]) -> None:
    """Override the tenant's limits (the others keep theirs); call inside the caller's transaction."""
    await registry.set_quotas(conn, tenant_id, limits)


# -- expansions --------------------------------------------------------------------------------------

_EXPANSION_COLUMNS = sql.SQL("id, quota_type, extra, reason, expires_at, created_at, created_by")


def _expansion(row: Mapping[str, Any]) -> Expansion:
    return Expansion(
        id=row["id"],
        quota=QuotaType(row["quota_type"]),
        extra=row["extra"],
        reason=row["reason"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


async def add_expansion(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    *,
    quota: QuotaType,
    extra: int,
    hours: int,
    reason: str,
    created_by: str,
) -> Expansion:
    """Grant ``extra`` on ``quota`` for ``hours`` from now."""
    if not 0 < extra <= MAX_LIMIT or not 1 <= hours <= 720:
        raise ValidationFailed("extra must be 1..2**62 and hours 1..720")
    query = sql.SQL(
        """
        INSERT INTO quota_expansions (tenant_id, quota_type, extra, reason, expires_at, created_by)
        VALUES (%s, %s, %s, %s, now() + make_interval(hours => %s), %s)
        RETURNING {}
        """
    ).format(_EXPANSION_COLUMNS)
    cur = await conn.execute(query, (tenant_id, quota.value, extra, reason, hours, created_by))
    row = await cur.fetchone()
    assert row is not None
    return _expansion(row)


async def active_expansions(conn: AsyncConn, tenant_id: uuid.UUID) -> list[Expansion]:
    query = sql.SQL(
        "SELECT {} FROM quota_expansions WHERE tenant_id = %s AND expires_at > now() ORDER BY expires_at, id"
    ).format(_EXPANSION_COLUMNS)
    cur = await conn.execute(query, (tenant_id,))
    return [_expansion(r) for r in await cur.fetchall()]


async def delete_expired_expansions(conn: AsyncConn, *, grace: timedelta = timedelta(days=7)) -> int:
    """Delete expansions that expired more than ``grace`` ago (they no longer count anyway); how many.

    For a leader job; the grant itself stays in ``platform_audit`` (``tenant.storage.expand``).
    """
    cur = await conn.execute("DELETE FROM quota_expansions WHERE expires_at < now() - %s", (grace,))
    return cur.rowcount
