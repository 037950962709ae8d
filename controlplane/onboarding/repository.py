"""All SQL of onboarding: ``tenant_onboarding`` in the control database, and the checklist's reads (a few
facts about a tenant from the control database and from the tenant's own). Callers own the transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from controlplane.db import AsyncConn

Row = dict[str, Any]


async def insert(
    conn: AsyncConn, tenant_id: uuid.UUID, admin_email: str, verify_hash: bytes, verify_expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO tenant_onboarding (tenant_id, admin_email, verify_hash, verify_expires_at)"
        " VALUES (%s, %s, %s, %s)",
        (tenant_id, admin_email, verify_hash, verify_expires_at),
    )


async def mark_verified(conn: AsyncConn, verify_hash: bytes, now: datetime) -> Row | None:
    """Mark the signup holding this unexpired, unused token verified: its slug, address and time."""
    cur = await conn.execute(
        """
        UPDATE tenant_onboarding o SET email_verified_at = %(now)s
        FROM tenants t
        WHERE t.id = o.tenant_id AND o.verify_hash = %(hash)s
          AND o.email_verified_at IS NULL AND o.verify_expires_at > %(now)s
        RETURNING t.slug, o.admin_email AS email, o.email_verified_at AS verified_at
        """,
        {"now": now, "hash": verify_hash},
    )
    return await cur.fetchone()


async def verification_state(conn: AsyncConn, verify_hash: bytes) -> Row | None:
    """The signup holding this token (whatever its state), or None."""
    cur = await conn.execute(
        "SELECT email_verified_at, verify_expires_at FROM tenant_onboarding WHERE verify_hash = %s", (verify_hash,)
    )
    return await cur.fetchone()


async def get(conn: AsyncConn, tenant_id: uuid.UUID) -> Row | None:
    cur = await conn.execute(
        "SELECT tenant_id, admin_email, verify_expires_at, email_verified_at, created_at"
        " FROM tenant_onboarding WHERE tenant_id = %s",
        (tenant_id,),
    )
    return await cur.fetchone()


async def control_marks(conn: AsyncConn, tenant_id: uuid.UUID) -> Row | None:
    """The tenant's tier, whether its first admin verified the address, whether it has a subscription."""
    cur = await conn.execute(
        """
        SELECT t.subscription_tier AS tier,
               o.email_verified_at IS NOT NULL AS email_verified,
               EXISTS (SELECT 1 FROM tenant_billing b
                       WHERE b.tenant_id = t.id AND b.subscription_id IS NOT NULL) AS subscribed
        FROM tenants t LEFT JOIN tenant_onboarding o ON o.tenant_id = t.id
        WHERE t.id = %s
        """,
        (tenant_id,),
    )
    return await cur.fetchone()


async def tenant_marks(conn: AsyncConn) -> Row:
    """On the tenant's own database: any card; more than one user or any pending invitation."""
    cur = await conn.execute(
        """
        SELECT EXISTS (SELECT 1 FROM cards) AS first_card,
               (EXISTS (SELECT 1 FROM users OFFSET 1)
                OR EXISTS (SELECT 1 FROM users WHERE invite_hash IS NOT NULL)) AS first_invited_user
        """
    )
    row = await cur.fetchone()
    assert row is not None
    return row
