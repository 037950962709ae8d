"""Erasing a user (GDPR right to erasure): the user and their personal data go, the audit trail stays.

``erase`` runs inside the tenant request's transaction (it never commits): it applies the accounts rules
(nobody erases someone above them or themselves, the last tenant_admin who can manage users stays), checks
the email typed back, then

- records the erasure in the control database (``user_erasures``, the email kept under the master key
  only until the control database is scrubbed), before anything else, so it can always be finished;
- deletes the user's row (their invitation with it), login sessions and API keys, and (``delete_files``)
  the images of the cards they created: the cards stay with the tenant's collection (their creator
  cleared), their image objects are deleted once the transaction has committed;
- pseudonymises their audit entries: the actor becomes a stable pseudonym (``erased:<hmac>``, the same for
  every entry, derived from the tenant, the user id and ``CARDVAULT_SECRET_KEY``), the source address is
  dropped, entries about the user name the pseudonym; their email is replaced by the pseudonym in every
  text and JSON column of every table (audit details included; whole addresses only), their display name
  wherever it is a value in audit details;
- writes the audit entry ``user.erase`` (no email).

``finish`` runs once the tenant's transaction has committed: it deletes the tenant's mails to the address,
scrubs it from every control-database row of the tenant (onboarding, platform audit, billing events, any
table with a ``tenant_id``), ends the user's exports and withdraws the tenant's running or ready ones (they
may hold the user's data; their archives are deleted), and closes the erasure. If the process dies before,
the leader's ``finish_pending`` does it (or, if the tenant's transaction never committed, abandons it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from typing import Any

from controlplane.accounts import guards
from controlplane.accounts import repository as accounts
from controlplane.audit import repository as audit
from controlplane.auth.models import Permission, Principal, Role
from controlplane.auth.passwords import normalize_email
from controlplane.context import TenantRequest
from controlplane.db import AsyncConn
from controlplane.errors import ConfirmationRequired, NotFound, PermissionDenied
from controlplane.paging import MAX_ID
from controlplane.platform import Platform
from controlplane.privacy import erasure_repository as repo
from controlplane.privacy import repository as exports_repo
from controlplane.privacy.dataset_repository import INTERNAL_TABLES
from controlplane.privacy.exports import Exports
from controlplane.privacy.models import ErasureResult
from controlplane.registry import repository as registry

log = logging.getLogger(__name__)

#: A pending erasure this old is finished (or abandoned) by the leader job: its request is long over.
STALE_AFTER = 300.0
#: Why a user erasure withdraws the tenant's other exports.
WITHDRAWN = "withdrawn: a user was erased after it was made (ask for a new export)"
#: Tenant tables the email is never scrubbed from: other users' own addresses live in ``users``.
_KEEP_TABLES = INTERNAL_TABLES | {"users"}


def pseudonym(secret_key: str, tenant_id: uuid.UUID, user_id: int) -> str:
    """The stable stand-in for an erased user in audit entries: ``erased:<20 hex of an HMAC>``."""
    key = hashlib.sha256(b"cardvault-erasure\x00" + secret_key.encode()).digest()
    return "erased:" + hmac.new(key, f"{tenant_id}:{user_id}".encode(), hashlib.sha256).hexdigest()[:20]


def email_pattern(email: str, *, json_text: bool = False) -> str:
    """A case-insensitive PostgreSQL regular expression matching ``email`` as a whole address (not inside
    a longer one), spelled as JSON text spells it when ``json_text``."""
    spelled = json.dumps(email, ensure_ascii=False)[1:-1] if json_text else email
    escaped = "".join(ch if ch.isalnum() else "\\" + ch for ch in spelled)
    return rf"(?<![[:alnum:]_.%+-]){escaped}(?![[:alnum:]_-]|\.[[:alnum:]])"


def _replace_name(value: Any, name: str, replacement: str) -> tuple[Any, bool]:
    """``value`` (JSON) with every string equal to ``name`` (ignoring case) replaced."""
    if isinstance(value, str):
        return (replacement, True) if value.strip().casefold() == name.casefold() else (value, False)
    if isinstance(value, dict):
        changed = False
        out = {}
        for k, v in value.items():
            out[k], hit = _replace_name(v, name, replacement)
            changed = changed or hit
        return out, changed
    if isinstance(value, list):
        pairs = [_replace_name(v, name, replacement) for v in value]
        return [v for v, _ in pairs], any(hit for _, hit in pairs)
    return value, False


class Erasure:
    def __init__(self, platform: Platform, exports: Exports) -> None:
        self._p = platform
        self._exports = exports

    def _check_actor(self, principal: Principal, target: dict[str, Any], managers: guards.Managers) -> None:
        if principal.user_id == target["id"]:  # a user, or an API key they made
            raise PermissionDenied(
                "you cannot erase yourself; ask another tenant_admin", permission=Permission.USERS_MANAGE.value
            )
        role = Role(target["tenant_role"])
        if role.rank > principal.role.rank:
            raise PermissionDenied(
                f"a {principal.role.value} cannot erase a {role.value}", permission=Permission.USERS_MANAGE.value
            )
        guards.keep_a_user_manager(int(target["id"]), managers, still_able=False)
        guards.check_actor_unchanged(principal, managers)

    async def erase(
        self, request: TenantRequest, user_id: int, confirm_email: str, *, delete_files: bool = False
    ) -> tuple[ErasureResult, list[str]]:
        """Erase the user inside the request's transaction (see the module doc): what was removed, and the
        storage keys of the images to delete once it has committed (``delete_files``). ``finish`` after
        the commit."""
        conn, tenant = request.conn, request.tenant
        managers = {int(row["id"]): row for row in await accounts.lock_user_managers(conn)}
        target = await repo.user_row(conn, user_id) if 1 <= user_id <= MAX_ID else None
        if target is None:
            raise NotFound(f"no user with id {user_id}", resource="user", id=user_id)
        self._check_actor(request.principal, target, managers)
        email = str(target["email"])
        if normalize_email(confirm_email).casefold() != email.casefold():
            raise ConfirmationRequired("confirm_email must be the user's email address, to confirm the erasure")
        erasure_id = uuid.uuid4()
        alias = pseudonym(self._p.settings.security.secret_key, tenant.id, user_id)
        async with self._p.control.connection() as control:
            await repo.insert_erasure(
                control,
                erasure_id=erasure_id,
                tenant_id=tenant.id,
                user_id=user_id,
                pseudonym=alias,
                email_encrypted=self._p.box.encrypt(email),
                requested_by=request.audit.actor,
            )
        files = await repo.forget_card_images(conn, user_id) if delete_files else []
        sessions, keys = await repo.delete_user(conn, user_id)
        acted = await repo.pseudonymise_audit(conn, user_id, alias)
        scrubbed = await self._scrub_tenant(conn, email, alias)
        name = (target["display_name"] or "").strip()
        if len(name) >= 2:
            scrubbed += await self._scrub_name(conn, name, alias)
        result = ErasureResult(
            erasure_id=erasure_id,
            user_id=user_id,
            pseudonym=alias,
            sessions_removed=sessions,
            api_keys_removed=keys,
            audit_entries_pseudonymised=acted,
            rows_scrubbed=scrubbed,
            files_removed=len(files),
        )
        details = {"erasure_id": str(erasure_id), "sessions_removed": sessions, "api_keys_removed": keys}
        await audit.record_tenant(conn, request.audit, "user.erase", "user", alias, details | {"files": len(files)})
        return result, files

    async def _scrub_tenant(self, conn: AsyncConn, email: str, alias: str) -> int:
        changed = 0
        for column in await repo.text_columns(conn):
            if column.table in _KEEP_TABLES:
                continue
            changed += await repo.scrub(conn, column, email_pattern(email, json_text=column.json), alias)
        return changed

    async def _scrub_name(self, conn: AsyncConn, name: str, alias: str) -> int:
        changed = 0
        for entry_id, details in await repo.audit_details_mentioning(conn, name):
            replaced, hit = _replace_name(details, name, alias)
            if hit:
                await repo.set_audit_details(conn, entry_id, replaced)
                changed += 1
        return changed

    @staticmethod
    async def user_id(conn: AsyncConn, email: str) -> int | None:
        """The id of the tenant's user with this email (any case), if there is one."""
        return await repo.user_id_by_email(conn, email)

    # -- after the tenant's commit ------------------------------------------------------------------

    async def finish(self, erasure_id: uuid.UUID) -> bool:
        """Scrub the control database and end the exports of a committed erasure; False if it was closed."""
        async with self._p.control.connection() as conn, conn.transaction():
            if not await repo.lock_erasure(conn, erasure_id):
                return False
            row = await repo.get_erasure(conn, erasure_id)
            assert row is not None
            summary = await self._scrub_control(conn, row, self._p.box.decrypt(row["email_encrypted"]))
            await repo.end_erasure(conn, erasure_id, "done", summary)
        await self._exports.delete_ended_archives()
        return True

    async def _scrub_control(self, conn: AsyncConn, row: dict[str, Any], email: str) -> dict[str, int]:
        tenant_id: uuid.UUID = row["tenant_id"]
        mails = await repo.delete_outbox_mail(conn, tenant_id, email)
        rows = 0
        for column in await repo.text_columns(conn, tables_with="tenant_id"):
            pattern = email_pattern(email, json_text=column.json)
            rows += await repo.scrub(conn, column, pattern, row["pseudonym"], tenant_id=tenant_id)
        own = await exports_repo.end_user_exports(conn, tenant_id, row["user_id"], row["pseudonym"])
        withdrawn = await exports_repo.withdraw(conn, tenant_id, WITHDRAWN)
        return {"mails_deleted": mails, "control_rows_scrubbed": rows, "exports_ended": own + withdrawn}

    async def finish_pending(self) -> str:
        """Close erasures a process left pending: finished if the user is gone from the tenant database,
        abandoned if the tenant's transaction never committed (the user is still there)."""
        async with self._p.control.connection() as conn:
            pending = await repo.pending_erasures(conn, older_than_seconds=STALE_AFTER)
        done = abandoned = 0
        for row in pending:
            try:
                if await self._user_still_there(row):
                    async with self._p.control.connection() as conn:
                        if await repo.end_erasure(conn, row["id"], "abandoned", {"reason": "not committed"}):
                            abandoned += 1
                elif await self.finish(row["id"]):
                    done += 1
            except Exception:
                log.warning("could not close user erasure %s; the next run retries", row["id"], exc_info=True)
        return f"{done} erasure(s) finished, {abandoned} abandoned"

    async def _user_still_there(self, row: dict[str, Any]) -> bool:
        async with self._p.control.connection() as control:
            tenant = await registry.get_by_id(control, row["tenant_id"])
            if tenant is None:
                return False
            email = self._p.box.decrypt(row["email_encrypted"])
            async with self._p.fleet.connect_database(control, tenant.server_id, tenant.database_name) as tdb:
                return await repo.user_still_there(tdb, row["user_id"], email)
