"""``cardvault users ...``: a tenant's users from the command line (e.g. a lost last tenant_admin).

The same rules as ``POST /t/{slug}/api/users`` (``controlplane.accounts``): email and password checks,
the ``max_users`` quota, unique emails; the CLI acts as a platform operator (``cli:<os user>`` in the
tenant's audit log) over a management connection to the tenant's database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import msgspec

from controlplane.auth.models import ROLE_PERMISSIONS, TENANT_ROLES, Principal, PrincipalKind, Role
from controlplane.cli.common import cli_actor, emit_json, json_option, read_password, table, with_platform

if TYPE_CHECKING:  # the rest is imported where used, so that the command line starts fast
    from controlplane.platform import Platform

_COLUMNS = ("id", "email", "role", "disabled", "invited", "created_at")


@click.group()
def users() -> None:
    """A tenant's users."""


@users.command("create")
@click.option("--tenant", "slug", required=True, help="Tenant slug.")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice([r.value for r in TENANT_ROLES]), default=Role.USER.value, show_default=True)
@click.option("--display-name")
@json_option
def create(slug: str, email: str, role: str, display_name: str | None, as_json: bool) -> None:
    """Create a user; the password is the first line of stdin (or prompted twice on a terminal)."""
    from controlplane.accounts.models import UserCreate

    password = read_password(f"Password for {email}")
    data = msgspec.convert(
        {"email": email, "role": role, "password": password, "display_name": display_name}, UserCreate
    )
    created = _as_operator(slug, lambda accounts: accounts.create_user(data))
    _show([created], as_json)


@users.command("list")
@click.option("--tenant", "slug", required=True, help="Tenant slug.")
@json_option
def list_(slug: str, as_json: bool) -> None:
    """Every user of the tenant (never a password hash)."""
    page = _as_operator(slug, lambda accounts: accounts.list_users(limit=1000, cursor=None))
    _show(page.items, as_json)


def _show(rows: list[Any], as_json: bool) -> None:
    if as_json:
        emit_json(rows[0] if len(rows) == 1 else rows)
    else:
        table([{c: getattr(r, c, None) for c in _COLUMNS} for r in rows], _COLUMNS)


def _as_operator(slug: str, work: Any) -> Any:
    """``work(accounts)`` as a platform operator inside the tenant, in one transaction of its database."""
    from controlplane.accounts.service import Accounts
    from controlplane.auth.passwords import Passwords
    from controlplane.auth.ratelimit import MemoryCounter, RateLimiter
    from controlplane.auth.service import Authenticator
    from controlplane.auth.tokens import KeyRing, TokenSigner
    from controlplane.context import AuditContext, TenantContext, TenantRequest
    from controlplane.provisioning.service import TenantService
    from controlplane.usage.quotas import limits_for

    actor = cli_actor()

    async def go(platform: Platform) -> Any:
        settings = platform.settings
        async with platform.control.connection() as conn:
            tenant = await TenantService(platform).require(conn, slug)
            keys = await KeyRing.load(conn, platform.box)
        auth = Authenticator(settings.auth, TokenSigner(keys), Passwords(settings.auth), RateLimiter(MemoryCounter()))
        principal = Principal(
            kind=PrincipalKind.AUTOMATION,
            subject=actor,
            label=actor,
            role=Role.SUPER_ADMIN,
            permissions=ROLE_PERMISSIONS[Role.SUPER_ADMIN],
            tenant_id=tenant.id,
        )
        async with (
            platform.control.connection() as control,
            platform.fleet.connect_database(control, tenant.server_id, tenant.database_name) as conn,
            conn.transaction(),
        ):
            request = TenantRequest(
                conn=conn,
                tenant=TenantContext.of(tenant),
                principal=principal,
                audit=AuditContext(actor=actor, actor_label="command line"),
            )
            return await work(Accounts(request, auth, limits_for(platform.control, tenant.id)))

    return with_platform(go)
