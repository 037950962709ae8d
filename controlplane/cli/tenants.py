"""``cardvault tenants ...``: the tenant lifecycle from the command line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from controlplane.cli.common import (
    confirm_destructive,
    emit_json,
    json_option,
    read_password,
    table,
    to_builtins,
    with_platform,
)
from controlplane.registry.models import Tenant, TenantStatus, Tier

if TYPE_CHECKING:  # the rest is imported where used, so that the command line starts fast
    from controlplane.platform import Platform
    from controlplane.provisioning.service import TenantService

T = TypeVar("T")

_COLUMNS = ("slug", "name", "status", "subscription_tier", "server_name", "schema_revision", "database_name")


def _with_service(work: Callable[[TenantService, Platform], Awaitable[T]]) -> T:
    from controlplane.provisioning.service import TenantService

    return with_platform(lambda platform: work(TenantService(platform), platform))


def _show(tenants: list[Tenant], as_json: bool) -> None:
    if as_json:
        emit_json(tenants[0] if len(tenants) == 1 else tenants)
    else:
        table([to_builtins(t) for t in tenants], _COLUMNS)


@click.group()
def tenants() -> None:
    """Create, inspect, suspend, resume, update and delete tenants."""


@tenants.command("create")
@click.option("--name", required=True, help="Display name.")
@click.option("--slug", required=True, help="URL name: 3-63 of a-z, 0-9 and '-'.")
@click.option("--tier", default=Tier.STARTER.value, show_default=True, help="starter | professional | enterprise")
@click.option("--admin-email", help="Create the first tenant_admin (password from stdin, or prompted).")
@json_option
def create(name: str, slug: str, tier: str, admin_email: str | None, as_json: bool) -> None:
    """Provision a tenant: a database cloned from the template, its own login role, tier quotas."""
    from controlplane.auth.passwords import Passwords, normalize_email, validate_password
    from controlplane.provisioning.service import FirstAdmin

    password = read_password(f"Password for {admin_email}") if admin_email else None

    async def work(service: TenantService, platform: Platform) -> Tenant:
        admin = None
        if admin_email is not None and password is not None:
            hashed = await Passwords(platform.settings.auth).hash(validate_password(password))
            admin = FirstAdmin(email=normalize_email(admin_email), password_hash=hashed)
        return await service.create(name=name, slug=slug, tier=tier, admin=admin)

    _show([_with_service(work)], as_json)


@tenants.command("list")
@click.option("--status", type=click.Choice([s.value for s in TenantStatus]))
@click.option("--tier", type=click.Choice([t.value for t in Tier]))
@json_option
def list_(status: str | None, tier: str | None, as_json: bool) -> None:
    """List tenants (ordered by slug)."""
    found = _with_service(
        lambda s, _: s.list(status=TenantStatus(status) if status else None, tier=Tier(tier) if tier else None)
    )
    if as_json:
        emit_json(found)
    else:
        table([to_builtins(t) for t in found], _COLUMNS)


@tenants.command("show")
@click.argument("slug")
@json_option
def show(slug: str, as_json: bool) -> None:
    """One tenant with its quotas and recent operations."""
    from controlplane.provisioning import repository as ledger
    from controlplane.registry import repository as registry

    async def detail(service: TenantService, platform: Platform) -> dict[str, Any]:
        tenant = await service.get(slug)
        async with platform.control.connection() as conn:
            quotas = await registry.get_quotas(conn, tenant.id)
            operations = await ledger.for_tenant(conn, tenant.id, limit=10)
        return {"tenant": tenant, "quotas": quotas, "operations": operations}

    found = _with_service(detail)
    if as_json:
        emit_json(found)
        return
    for key, value in to_builtins(found["tenant"]).items():
        click.echo(f"{key:>18}: {'' if value is None else value}")
    click.echo("\nquotas:")
    table([to_builtins(q) for q in found["quotas"]], ("quota_type", "quota_limit", "current_usage"))
    click.echo("\nrecent operations:")
    table(
        [to_builtins(o) for o in found["operations"]],
        ("id", "kind", "state", "step", "attempts", "error", "started_at"),
    )


@tenants.command("update")
@click.argument("slug")
@click.option("--name", help="New display name.")
@click.option("--new-slug", help="New slug (the database keeps its name).")
@click.option("--tier", help="New tier (quotas follow).")
@json_option
def update(slug: str, name: str | None, new_slug: str | None, tier: str | None, as_json: bool) -> None:
    """Rename a tenant or change its tier."""
    _show([_with_service(lambda s, _: s.update(slug, name=name, new_slug=new_slug, tier=tier))], as_json)


@tenants.command("suspend")
@click.argument("slug")
@json_option
def suspend(slug: str, as_json: bool) -> None:
    """Lock the tenant out of its database (its sessions are ended)."""
    _show([_with_service(lambda s, _: s.suspend(slug))], as_json)


@tenants.command("resume")
@click.argument("slug")
@json_option
def resume(slug: str, as_json: bool) -> None:
    """Re-open a suspended tenant, or cancel the pending deletion of a deleted one."""
    _show([_with_service(lambda s, _: s.resume(slug))], as_json)


@tenants.command("delete")
@click.argument("slug")
@click.option("--now", is_flag=True, help="Purge at once instead of after CARDVAULT_DELETE_GRACE.")
@click.option("--yes", is_flag=True, help="Do not ask for the slug typed back.")
@json_option
def delete(slug: str, now: bool, yes: bool, as_json: bool) -> None:
    """Soft-delete a tenant (purged after the grace period), or purge it with --now."""
    with confirm_destructive(slug, "purge" if now else "delete", yes):
        tenant = _with_service(lambda s, _: s.delete(slug, now=now))
    if tenant is None:
        if as_json:
            emit_json({"slug": slug, "status": "purged"})
        else:
            click.echo(f"tenant {slug} purged")
    else:
        _show([tenant], as_json)


@tenants.command("purge")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for the slug typed back.")
@json_option
def purge(slug: str, yes: bool, as_json: bool) -> None:
    """Drop the tenant's database and role and forget it. Irreversible."""
    with confirm_destructive(slug, "purge", yes):
        _with_service(lambda s, _: s.purge(slug))
    if as_json:
        emit_json({"slug": slug, "status": "purged"})
    else:
        click.echo(f"tenant {slug} purged")


@tenants.command("rekey-roles")
@click.argument("slugs", nargs=-1)
@json_option
def rekey_roles(slugs: tuple[str, ...], as_json: bool) -> None:
    """Re-store tenant roles' password verifiers at the current SCRAM iteration count (all tenants, or SLUGS).

    The passwords stay the same; new connections to the tenants get cheaper. Safe to run any time.
    """
    from controlplane.provisioning.role_verifiers import rekey_roles as rekey

    done = with_platform(lambda platform: rekey(platform, list(slugs) or None))
    if as_json:
        emit_json(done)
    else:
        table([to_builtins(r) for r in done], ("slug", "outcome"))
