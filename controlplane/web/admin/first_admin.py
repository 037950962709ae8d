"""Inviting a new tenant's first admin by mail, when the dashboard creates the tenant without a password.

``POST /admin/tenants`` takes the first admin's email and password together; the dashboard's form asks
for the email only (a super-admin should not choose, see or send someone else's password). The tenant is
then provisioned with that admin as an invited account (``password_hash = ''``, which never verifies),
and this module gives the account an invitation and queues the invitation mail, exactly what a tenant
admin's ``POST /api/users`` without a password does: the admin sets a password through the link.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime

import psycopg

from controlplane.auth.api_keys import hash_secret
from controlplane.auth.service import expiry
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError
from controlplane.mail import outbox, templates
from controlplane.mail.models import MailKind
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.registry.models import Tenant

log = logging.getLogger(__name__)

#: What the form provisions the first admin with: no password (``''`` never verifies) until invited.
NO_PASSWORD = ""


async def _set_invitation(conn: AsyncConn, email: str, token_hash: bytes, expires_at: datetime) -> bool:
    """Give the password-less user ``email`` of the tenant database an invitation; False if none."""
    cur = await conn.execute(
        "UPDATE users SET invite_hash = %s, invite_expires_at = %s"
        " WHERE lower(email) = lower(%s) AND password_hash = '' RETURNING id",
        (token_hash, expires_at, email),
    )
    return await cur.fetchone() is not None


async def invite_first_admin(
    platform: Platform, pools: TenantPools, tenant: Tenant, email: str, *, ttl_seconds: float
) -> bool:
    """Invite ``email`` (already the tenant's password-less tenant_admin) and queue the mail; False when
    that failed (logged, not raised: the tenant exists, and its admin can be invited again)."""
    try:
        return await _invite(platform, pools, tenant, email, ttl_seconds)
    except (CardVaultError, psycopg.Error):
        log.error("could not invite the first admin of tenant %s", tenant.slug, exc_info=True)
        return False


async def _invite(platform: Platform, pools: TenantPools, tenant: Tenant, email: str, ttl_seconds: float) -> bool:
    token = secrets.token_urlsafe(32)
    expires_at = expiry(ttl_seconds)
    async with pools.connection(tenant.id) as conn:
        if not await _set_invitation(conn, email, hash_secret(token), expires_at):
            return False
    subject, body = templates.invitation(
        base_url=platform.settings.http.base_url,
        slug=tenant.slug,
        role="tenant_admin",
        token=token,
        expires_at=expires_at,
    )
    async with platform.control.connection() as conn, conn.transaction():
        await outbox.enqueue(conn, tenant.id, MailKind.INVITATION, email, subject, body)
    return True
