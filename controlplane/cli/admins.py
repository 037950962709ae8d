"""``cardvault admins ...``: platform super-admins (signing keys: ``controlplane/cli/keys.py``).

Every change is recorded in ``platform_audit`` with the actor ``cli:<os user>``, in the same
transaction as the change itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import click

from controlplane.cli.common import (
    cli_actor,
    emit_json,
    json_option,
    read_password,
    table,
    to_builtins,
    with_platform,
)

if TYPE_CHECKING:  # the rest is imported where used, so that the command line starts fast
    from controlplane.auth.repository import Admin
    from controlplane.db import AsyncConn
    from controlplane.platform import Platform

T = TypeVar("T")

_ADMIN_COLUMNS = ("id", "email", "disabled", "created_at", "last_login_at")


def _show(admins: list[Admin], as_json: bool) -> None:
    if as_json:
        emit_json(admins[0] if len(admins) == 1 else admins)
    else:
        table([to_builtins(a) for a in admins], _ADMIN_COLUMNS)


async def _audit(conn: AsyncConn, action: str, entity: str, entity_id: object, **details: Any) -> None:
    from controlplane.audit import repository as audit
    from controlplane.context import AuditContext

    await audit.record_platform(
        conn, AuditContext(actor=cli_actor()), action, entity=entity, entity_id=entity_id, details=details
    )


@click.group()
def admins() -> None:
    """Platform super-admins (they log in to /admin/* and may impersonate tenant users)."""


@admins.command("create")
@click.option("--email", required=True, help="Login email (unique regardless of case).")
@json_option
def create(email: str, as_json: bool) -> None:
    """Create a super-admin. The password is read from stdin (first line) or asked twice."""
    from controlplane.auth import repository as admins_repo
    from controlplane.auth.passwords import Passwords, normalize_email, validate_password

    password = read_password()

    async def work(platform: Platform) -> Admin:
        address = normalize_email(email)
        password_hash = await Passwords(platform.settings.auth).hash(validate_password(password))
        async with platform.control.connection() as conn, conn.transaction():
            admin = await admins_repo.insert_admin(conn, email=address, password_hash=password_hash)
            await _audit(conn, "admin.create", "platform_admin", admin.id, email=admin.email)
        return admin

    _show([with_platform(work)], as_json)


@admins.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List super-admins (ordered by email)."""
    from controlplane.auth import repository as admins_repo

    async def work(platform: Platform) -> list[Admin]:
        async with platform.control.connection() as conn:
            return await admins_repo.list_admins(conn)

    found = with_platform(work)
    if as_json:
        emit_json(found)
    else:
        table([to_builtins(a) for a in found], _ADMIN_COLUMNS)


def _set_disabled(email: str, disabled: bool) -> Admin:
    from controlplane.auth import repository as admins_repo
    from controlplane.auth import session_repository as sessions
    from controlplane.auth.passwords import normalize_email
    from controlplane.auth.repository import AdminNotFound

    async def work(platform: Platform) -> Admin:
        async with platform.control.connection() as conn, conn.transaction():
            admin = await admins_repo.set_admin_disabled(conn, normalize_email(email), disabled)
            if admin is None:
                raise AdminNotFound(f"no admin with email {email!r}")
            revoked = await sessions.revoke_all(conn, "platform_sessions", admin.id) if disabled else 0
            action = "admin.disable" if disabled else "admin.enable"
            await _audit(conn, action, "platform_admin", admin.id, email=admin.email, sessions_revoked=revoked)
        return admin

    return with_platform(work)


@admins.command("disable")
@click.option("--email", required=True)
@json_option
def disable(email: str, as_json: bool) -> None:
    """Disable a super-admin and end all of its sessions."""
    _show([_set_disabled(email, True)], as_json)


@admins.command("enable")
@click.option("--email", required=True)
@json_option
def enable(email: str, as_json: bool) -> None:
    """Re-enable a disabled super-admin."""
    _show([_set_disabled(email, False)], as_json)


@admins.command("set-password")
@click.option("--email", required=True)
@json_option
def set_password(email: str, as_json: bool) -> None:
    """Replace a super-admin's password (stdin or asked twice) and end all of its sessions."""
    from controlplane.auth import repository as admins_repo
    from controlplane.auth import session_repository as sessions
    from controlplane.auth.passwords import Passwords, normalize_email, validate_password
    from controlplane.auth.repository import AdminNotFound

    password = read_password()

    async def work(platform: Platform) -> Admin:
        password_hash = await Passwords(platform.settings.auth).hash(validate_password(password))
        async with platform.control.connection() as conn, conn.transaction():
            admin = await admins_repo.get_admin_by_email(conn, normalize_email(email))
            if admin is None:
                raise AdminNotFound(f"no admin with email {email!r}")
            await admins_repo.set_admin_password(conn, admin.id, password_hash)
            revoked = await sessions.revoke_all(conn, "platform_sessions", admin.id)
            await _audit(
                conn, "admin.set_password", "platform_admin", admin.id, email=admin.email, sessions_revoked=revoked
            )
        return admin

    _show([with_platform(work)], as_json)
