"""The SQL of a user erasure: in the tenant's database (the user's rows, their audit entries, the email
wherever it was written) and in the control database (``user_erasures``, and the email in every row that
belongs to the tenant).

Emails are found with a case-insensitive regular expression that matches the address as a whole word
(``bob@x.test`` is not found inside ``jimbob@x.test``); JSON columns are matched on their text form with
the address spelled as JSON spells it. Table and column names come from the catalogs and go through
``sql.Identifier``; patterns and replacements are always parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
from psycopg import sql
from psycopg.types.json import Jsonb

from controlplane.db import AsyncConn


class TextColumn(msgspec.Struct, frozen=True):
    """A column that can hold an email: text-like, or JSON (matched on its text form)."""

    table: str
    column: str
    #: The type's name (``text``, ``varchar``, ``jsonb`` ...).
    type: str

    @property
    def json(self) -> bool:
        return self.type in ("json", "jsonb")


# -- the tenant database ---------------------------------------------------------------------------


async def user_row(conn: AsyncConn, user_id: int) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT id, email, display_name, tenant_role, permissions, disabled FROM users WHERE id = %s", (user_id,)
    )
    return await cur.fetchone()


async def user_id_by_email(conn: AsyncConn, email: str) -> int | None:
    cur = await conn.execute("SELECT id FROM users WHERE lower(email) = lower(%s)", (email,))
    row = await cur.fetchone()
    return int(row["id"]) if row else None


async def user_still_there(conn: AsyncConn, user_id: int, email: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM users WHERE id = %s AND lower(email) = lower(%s)", (user_id, email))
    return await cur.fetchone() is not None


async def forget_card_images(conn: AsyncConn, user_id: int) -> list[str]:
    """Detach and forget the image files of the cards the user created; their storage keys."""
    cur = await conn.execute(
        "DELETE FROM files WHERE card_id IN (SELECT id FROM cards WHERE created_by = %s) RETURNING key", (user_id,)
    )
    keys = [str(row["key"]) for row in await cur.fetchall()]
    await conn.execute("UPDATE cards SET image = NULL WHERE created_by = %s AND image IS NOT NULL", (user_id,))
    return keys


async def delete_user(conn: AsyncConn, user_id: int) -> tuple[int, int]:
    """Delete the user with their API keys and login sessions (an invitation is part of the user's row);
    (sessions removed, API keys removed)."""
    keys = await conn.execute("DELETE FROM api_keys WHERE created_by = %s", (user_id,))
    sessions = await conn.execute("DELETE FROM auth_sessions WHERE user_id = %s", (user_id,))
    await conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
    return sessions.rowcount, keys.rowcount


async def pseudonymise_audit(conn: AsyncConn, user_id: int, pseudonym: str) -> int:
    """The user's audit entries name ``pseudonym`` as their actor (and lose the source address); entries
    about the user name it as their entity id. The number of entries they were the actor of."""
    acted = await conn.execute(
        "UPDATE audit_log SET actor = %s, source_address = NULL WHERE actor = %s", (pseudonym, f"user:{user_id}")
    )
    await conn.execute(
        "UPDATE audit_log SET entity_id = %s WHERE entity = 'user' AND entity_id = %s", (pseudonym, str(user_id))
    )
    return acted.rowcount


async def audit_details_mentioning(conn: AsyncConn, needle: str) -> list[tuple[int, dict[str, Any]]]:
    """(id, details) of audit entries whose details contain ``needle`` (case-insensitively)."""
    cur = await conn.execute(
        "SELECT id, details FROM audit_log WHERE position(lower(%s) in lower(details::text)) > 0", (needle,)
    )
    return [(int(row["id"]), row["details"]) for row in await cur.fetchall()]


async def set_audit_details(conn: AsyncConn, entry_id: int, details: Mapping[str, Any]) -> None:
    await conn.execute("UPDATE audit_log SET details = %s WHERE id = %s", (Jsonb(dict(details)), entry_id))


# -- both databases ---------------------------------------------------------------------------------


async def text_columns(conn: AsyncConn, *, tables_with: str | None = None) -> list[TextColumn]:
    """The text and JSON columns of the public tables (only tables having the column ``tables_with``, when
    given); columns holding ciphertext (``*_encrypted``) are left out."""
    cur = await conn.execute(
        """
        SELECT c.relname AS table, a.attname AS column, t.typname AS type
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          JOIN pg_type t ON t.oid = a.atttypid
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND t.typname IN ('text', 'varchar', 'bpchar', 'citext', 'json', 'jsonb')
           AND a.attname NOT LIKE '%%\\_encrypted'
           AND (%(with)s::text IS NULL OR EXISTS (
                SELECT 1 FROM pg_attribute k WHERE k.attrelid = c.oid AND k.attname = %(with)s AND NOT k.attisdropped))
         ORDER BY 1, 2
        """,
        {"with": tables_with},
    )
    return [TextColumn(row["table"], row["column"], row["type"]) for row in await cur.fetchall()]


async def scrub(
    conn: AsyncConn,
    column: TextColumn,
    pattern: str,
    replacement: str,
    *,
    tenant_id: uuid.UUID | None = None,
) -> int:
    """Replace every match of ``pattern`` (an ARE, case-insensitive) in the column by ``replacement``
    (rows of ``tenant_id`` only, when given); the number of rows changed."""
    target = sql.Identifier(column.column)
    value = sql.SQL("{}::text").format(target) if column.json else target
    replaced = sql.SQL("regexp_replace({}, %(pattern)s, %(replacement)s, 'gi')").format(value)
    if column.json:
        replaced = sql.SQL("({})::{}").format(replaced, sql.Identifier(column.type))
    statement = sql.SQL("UPDATE {table} SET {target} = {replaced} WHERE {value} ~* %(pattern)s").format(
        table=sql.Identifier(column.table), target=target, replaced=replaced, value=value
    )
    if tenant_id is not None:
        statement = sql.SQL("{} AND tenant_id = %(tenant)s").format(statement)
    cur = await conn.execute(statement, {"pattern": pattern, "replacement": replacement, "tenant": tenant_id})
    return cur.rowcount


# -- the control database ---------------------------------------------------------------------------


async def insert_erasure(
    conn: AsyncConn,
    *,
    erasure_id: uuid.UUID,
    tenant_id: uuid.UUID,
    user_id: int,
    pseudonym: str,
    email_encrypted: str,
    requested_by: str,
) -> None:
    await conn.execute(
        "INSERT INTO user_erasures (id, tenant_id, user_id, pseudonym, email_encrypted, requested_by)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (erasure_id, tenant_id, user_id, pseudonym, email_encrypted, requested_by),
    )


async def get_erasure(conn: AsyncConn, erasure_id: uuid.UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT id, tenant_id, user_id, pseudonym, email_encrypted, state FROM user_erasures WHERE id = %s",
        (erasure_id,),
    )
    return await cur.fetchone()


async def pending_erasures(conn: AsyncConn, *, older_than_seconds: float) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT id, tenant_id, user_id, pseudonym, email_encrypted FROM user_erasures"
        " WHERE state = 'pending' AND created_at < now() - make_interval(secs => %s) ORDER BY created_at",
        (older_than_seconds,),
    )
    return list(await cur.fetchall())


async def end_erasure(conn: AsyncConn, erasure_id: uuid.UUID, state: str, summary: Mapping[str, Any]) -> bool:
    """Close a pending erasure (``done`` or ``abandoned``), forgetting the email; False if it was closed."""
    cur = await conn.execute(
        "UPDATE user_erasures SET state = %s, email_encrypted = NULL, summary = summary || %s, finished_at = now()"
        " WHERE id = %s AND state = 'pending'",
        (state, Jsonb(dict(summary)), erasure_id),
    )
    return cur.rowcount == 1


async def lock_erasure(conn: AsyncConn, erasure_id: uuid.UUID) -> bool:
    """Lock a pending erasure for its closing transaction (skip it when someone else is closing it)."""
    cur = await conn.execute(
        "SELECT 1 FROM user_erasures WHERE id = %s AND state = 'pending' FOR UPDATE SKIP LOCKED", (erasure_id,)
    )
    return await cur.fetchone() is not None


async def delete_outbox_mail(conn: AsyncConn, tenant_id: uuid.UUID, email: str) -> int:
    """The tenant's mails to ``email`` (sent or not: the user is gone)."""
    cur = await conn.execute(
        "DELETE FROM mail_outbox WHERE tenant_id = %s AND lower(recipient) = lower(%s)", (tenant_id, email)
    )
    return cur.rowcount
