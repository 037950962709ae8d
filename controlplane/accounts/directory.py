"""The workspace directory: which workspaces an email address belongs to, in the control database, so the
workspace finder answers without visiting any tenant database.

Each row is ``(email_key, tenant_id)`` for an enabled user of the tenant; ``email_key`` is
HMAC-SHA256 of the lower-cased address under a key derived from ``CARDVAULT_SECRET_KEY``, so the
control database holds no tenant user's address in clear (and a stolen copy cannot be searched without
the key). A workspace's entries are always rebuilt whole from its ``users`` table (``refresh``), which
makes every update idempotent and lets two ways keep them current:

- right after a change of users commits (the accounts API, a single sign-on's just-in-time user, the
  first admin seeded at provisioning): the change's own workspace is rebuilt, best effort;
- the converging sync (``sync_due``, run by the ``collect_usage`` job): each run rebuilds a bounded
  batch of the workspaces synced least recently (never synced first), so whatever a hook missed (an
  erasure, a legacy import, a crash after a commit, a key rotation) heals within a few runs.

Only active and suspended workspaces are ever listed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from urllib.parse import quote, urlencode

from psycopg import errors as pg_errors

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.mail import outbox
from controlplane.mail.models import MailKind
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools

log = logging.getLogger(__name__)

#: Workspaces rebuilt per run of the converging sync (the least recently synced first).
SYNC_BATCH = 200
#: Workspaces whose users may find them (a provisioning, deleting or broken one is never listed).
_LISTED = ("active", "suspended")


def directory_key(secret_key: str) -> bytes:
    """The HMAC key of the directory, derived from ``CARDVAULT_SECRET_KEY`` (and nothing else)."""
    return hashlib.sha256(f"cardvault workspace directory|{secret_key}".encode()).digest()


def email_key(key: bytes, email: str) -> bytes:
    return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).digest()


# -- SQL -----------------------------------------------------------------------------------------------


async def listed_emails(tenant_conn: AsyncConn) -> list[str]:
    """The addresses of the workspace's enabled users (tenant database)."""
    cur = await tenant_conn.execute("SELECT email FROM users WHERE NOT disabled")
    return [str(row["email"]) for row in await cur.fetchall()]


async def replace_entries(control: AsyncConn, tenant_id: uuid.UUID, keys: set[bytes]) -> None:
    """Make the workspace's entries exactly ``keys`` and note the sync (control database). A tenant row
    deleted meanwhile is nothing to record."""
    try:
        async with control.transaction():
            await control.execute(
                "DELETE FROM workspace_directory WHERE tenant_id = %s AND NOT (email_key = ANY(%s))",
                (tenant_id, list(keys)),
            )
            await control.execute(
                "INSERT INTO workspace_directory (email_key, tenant_id) SELECT k, %s FROM unnest(%s::bytea[]) AS k"
                " ON CONFLICT DO NOTHING",
                (tenant_id, list(keys)),
            )
            await control.execute(
                "INSERT INTO workspace_directory_sync (tenant_id, synced_at) VALUES (%s, now())"
                " ON CONFLICT (tenant_id) DO UPDATE SET synced_at = EXCLUDED.synced_at",
                (tenant_id,),
            )
    except pg_errors.ForeignKeyViolation:
        log.info("directory: tenant %s is gone; nothing to record", tenant_id)


async def add_entry(control: AsyncConn, key: bytes, tenant_id: uuid.UUID, email: str) -> None:
    """One more entry (a new user, before the workspace's next rebuild)."""
    await control.execute(
        "INSERT INTO workspace_directory (email_key, tenant_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (email_key(key, email), tenant_id),
    )


async def workspaces_of(control: AsyncConn, key: bytes, email: str) -> list[str]:
    """The slugs of the listed workspaces with an enabled user of this address."""
    cur = await control.execute(
        "SELECT t.slug FROM workspace_directory d JOIN tenants t ON t.id = d.tenant_id"
        " WHERE d.email_key = %s AND t.status = ANY(%s) ORDER BY t.slug",
        (email_key(key, email), list(_LISTED)),
    )
    return [str(row["slug"]) for row in await cur.fetchall()]


# -- keeping it current --------------------------------------------------------------------------------


async def refresh(platform: Platform, pools: TenantPools, tenant_id: uuid.UUID) -> None:
    """Rebuild one workspace's entries after a change of its users committed. Best effort: a failure is
    logged, and the converging sync repairs it."""
    try:
        async with pools.connection(tenant_id, autocommit=True) as tenant_conn:
            emails = await listed_emails(tenant_conn)
        key = directory_key(platform.settings.security.secret_key)
        async with platform.control.connection() as control:
            await replace_entries(control, tenant_id, {email_key(key, email) for email in emails})
    except Exception:
        log.warning("directory: could not refresh tenant %s (the periodic sync will)", tenant_id, exc_info=True)


async def sync_due(platform: Platform, batch: int = SYNC_BATCH) -> str:
    """The converging sync: rebuild the entries of the ``batch`` listed workspaces synced least recently,
    each read on a short-lived management connection (never a request pool). One outcome line."""
    key = directory_key(platform.settings.security.secret_key)
    async with platform.control.connection() as control:
        cur = await control.execute(
            "SELECT t.id, t.slug, t.server_id, t.database_name FROM tenants t"
            " LEFT JOIN workspace_directory_sync s ON s.tenant_id = t.id"
            " WHERE t.status = ANY(%s) ORDER BY s.synced_at NULLS FIRST, t.id LIMIT %s",
            (list(_LISTED), batch),
        )
        due = await cur.fetchall()
        synced = failed = 0
        for tenant in due:
            try:
                dsn = await platform.fleet.dsn(control, tenant["server_id"])
                async with db.connect(
                    dsn, platform.settings.database, dbname=tenant["database_name"], role="directory"
                ) as tenant_conn:
                    emails = await listed_emails(tenant_conn)
                await replace_entries(control, tenant["id"], {email_key(key, email) for email in emails})
                synced += 1
            except Exception as exc:  # one unreachable database does not stop the others
                failed += 1
                log.warning("directory: cannot sync tenant %s: %s", tenant["slug"], exc)
    return f"{synced} workspace(s) synced to the directory, {failed} failed"


# -- the finder's mail ---------------------------------------------------------------------------------


def workspace_list_text(base_url: str, email: str, slugs: list[str]) -> tuple[str, str]:
    """The mail listing ``slugs`` with a sign-in link each (the address prefilled)."""
    query = urlencode({"email": email})
    lines = "\n".join(f"    {slug}: {base_url}/t/{quote(slug, safe='')}/sign-in?{query}" for slug in slugs)
    subject = "Your CardVault workspaces"
    body = (
        f"Someone (hopefully you) asked which CardVault workspaces this address belongs to.\n\n"
        f"{lines}\n\n"
        f"Open a link to sign in. If you did not ask, ignore this mail: nothing has changed.\n"
    )
    return subject, body


async def mail_workspace_list(platform: Platform, email: str) -> bool:
    """Queue the list of ``email``'s workspaces to it; nothing when it belongs to none. Whether one was."""
    key = directory_key(platform.settings.security.secret_key)
    async with platform.control.connection() as control, control.transaction():
        slugs = await workspaces_of(control, key, email)
        if not slugs:
            return False
        subject, body = workspace_list_text(platform.settings.http.base_url, email, slugs)
        await outbox.enqueue(control, None, MailKind.WORKSPACE_LIST, email, subject, body)
    return True
