"""Quotas as the platform manages them: effective limits, admin overrides, temporary expansions.

- **Effective limit** of a quota = its ``tenant_quotas.quota_limit`` (None: unlimited) plus every
  ``quota_expansions`` row of that tenant and quota whose ``expires_at`` is still ahead
  (``quota_repository.effective_limit``). Expired expansions stop counting by themselves;
  ``quota_repository.delete_expired_expansions`` is the clean-up for a leader job. ``alerts`` and
  overage metering use it: it is the plan's limit.
- **Enforced limit** (``quota_repository.enforced_limit``): what creates and the API call limiter refuse
  at. The effective limit, except that with billing on a tenant paying for a paid plan may go over its
  cards, storage and API-call limits up to ``CARDVAULT_OVERAGE_CEILING`` times them (soft quotas; what
  is over the plan is billed as overage). Users stay hard.
- **Admin overrides**: ``parse_limits`` validates ``{quota_type: limit | None}``; the limits are
  written with ``registry.set_quotas`` (a later tier change resets them to the tier's defaults).

Callers own transactions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from controlplane.db import AsyncConn
from controlplane.errors import ValidationFailed
from controlplane.registry import repository as registry
from controlplane.registry.models import LimitLookup, QuotaType
from controlplane.usage import quota_repository as repository

log = logging.getLogger(__name__)

#: Largest limit (and expansion) an admin may set: far below bigint, so sums never overflow.
MAX_LIMIT = 2**62


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


def limits_for(control: AsyncConnectionPool[AsyncConn], tenant_id: uuid.UUID, *, ceiling: float = 1.0) -> LimitLookup:
    """The tenant's enforced limits, each looked up (``enforced_limit``) when asked for; ``ceiling``:
    ``BillingSettings.quota_ceiling`` (1.0: the plan's limits are hard).

    Lazy, so that reads never touch the control database; only a create that checks a quota does.
    """

    async def limit_of(quota: QuotaType) -> int | None:
        async with control.connection() as conn:
            return await repository.enforced_limit(conn, tenant_id, quota, ceiling=ceiling)

    return limit_of


async def quota_status(conn: AsyncConn, tenant_id: uuid.UUID) -> list[QuotaStatus]:
    """Every quota of the tenant with usage, expansion, effective limit and ratio."""
    return [
        QuotaStatus(
            quota=QuotaType(r["quota_type"]),
            limit=r["quota_limit"],
            expansion=int(r["extra"]),
            effective_limit=r["effective_limit"],
            usage=int(r["usage"]),
            ratio=ratio(int(r["usage"]), r["effective_limit"]),
        )
        for r in await repository.quota_rows(conn, tenant_id)
    ]


async def set_limits(conn: AsyncConn, tenant_id: uuid.UUID, limits: Mapping[QuotaType, int | None]) -> None:
    """Override the tenant's limits (the others keep theirs); call inside the caller's transaction."""
    await registry.set_quotas(conn, tenant_id, limits)


# -- expansions --------------------------------------------------------------------------------------


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
    row = await repository.insert_expansion(
        conn, tenant_id, quota=quota, extra=extra, hours=hours, reason=reason, created_by=created_by
    )
    return _expansion(row)


async def active_expansions(conn: AsyncConn, tenant_id: uuid.UUID) -> list[Expansion]:
    return [_expansion(r) for r in await repository.active_expansion_rows(conn, tenant_id)]
