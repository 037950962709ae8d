"""All SQL on ``mail_outbox``: enqueue in the caller's transaction, claim, and record what delivery did.

A mail is written in the same control-database transaction as what causes it (a signup, an invitation),
so it exists exactly when its cause committed. Delivery claims a bounded batch with ``FOR UPDATE SKIP
LOCKED`` and moves each claimed row's ``send_after`` forward by a lease, in one short transaction:
concurrent deliverers (another replica, a job overlapping itself) never take the same row, and no
transaction stays open while SMTP is talked to. A deliverer that dies mid-batch leaves its rows to be
claimed again when the lease ends, so a mail is sent at least once (rarely twice), never lost.

Once a mail is sent or refused for good its body is emptied: it carries a one-time token.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from controlplane.db import AsyncConn
from controlplane.mail.models import MailKind, OutgoingMail

#: Longest ``last_error`` kept.
_ERROR_LENGTH = 500


async def enqueue(
    conn: AsyncConn,
    tenant_id: uuid.UUID | None,
    kind: MailKind,
    recipient: str,
    subject: str,
    body: str,
) -> int:
    """Queue one mail (sent by the delivery job once the caller's transaction commits); its id."""
    cur = await conn.execute(
        "INSERT INTO mail_outbox (tenant_id, kind, recipient, subject, body) VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (tenant_id, kind.value, recipient, subject, body),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def claim(conn: AsyncConn, *, now: datetime, lease_until: datetime, limit: int) -> list[OutgoingMail]:
    """Up to ``limit`` mails due at ``now``, oldest first, none that another deliverer holds; they are
    leased until ``lease_until`` (not due again before). Run it in a transaction of its own."""
    cur = await conn.execute(
        """
        UPDATE mail_outbox m SET send_after = %(lease_until)s
        FROM (
            SELECT id FROM mail_outbox
            WHERE sent_at IS NULL AND failed_at IS NULL AND send_after <= %(now)s
              -- A mail written with a tenant's registration waits until the tenant is provisioned: a
              -- provisioning that fails takes the mail with it (ON DELETE CASCADE), unsent.
              AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = mail_outbox.tenant_id AND t.status = 'provisioning')
            ORDER BY send_after, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) due
        WHERE m.id = due.id
        RETURNING m.id, m.tenant_id, m.kind, m.recipient, m.subject, m.body, m.attempts
        """,
        {"now": now, "lease_until": lease_until, "limit": limit},
    )
    rows = await cur.fetchall()
    return sorted((OutgoingMail(**row) for row in rows), key=lambda mail: mail.id)


async def mark_sent(conn: AsyncConn, mail_id: int, *, now: datetime) -> None:
    await conn.execute(
        "UPDATE mail_outbox SET sent_at = %s, body = '', last_error = NULL WHERE id = %s AND sent_at IS NULL",
        (now, mail_id),
    )


async def mark_deferred(conn: AsyncConn, mail_id: int, error: str, *, retry_at: datetime) -> None:
    """One more failed attempt; due again at ``retry_at``."""
    await conn.execute(
        "UPDATE mail_outbox SET attempts = attempts + 1, last_error = %s, send_after = %s"
        " WHERE id = %s AND sent_at IS NULL",
        (error[:_ERROR_LENGTH], retry_at, mail_id),
    )


async def mark_failed(conn: AsyncConn, mail_id: int, error: str, *, now: datetime) -> None:
    """Refused for good: never tried again."""
    await conn.execute(
        "UPDATE mail_outbox SET attempts = attempts + 1, last_error = %s, failed_at = %s, body = ''"
        " WHERE id = %s AND sent_at IS NULL",
        (error[:_ERROR_LENGTH], now, mail_id),
    )


async def pending_count(conn: AsyncConn) -> int:
    """Mails still to send (due or not)."""
    cur = await conn.execute("SELECT count(*) AS n FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL")
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def delete_done_before(conn: AsyncConn, before: datetime) -> int:
    """Forget sent and refused mails created before ``before``; how many."""
    cur = await conn.execute(
        "DELETE FROM mail_outbox WHERE (sent_at IS NOT NULL OR failed_at IS NOT NULL) AND created_at < %s",
        (before,),
    )
    return cur.rowcount
