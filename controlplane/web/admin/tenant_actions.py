"""The tenant detail page's actions: ``POST /admin/ui/tenants/{slug}/<action>``.

Each does what its admin API route does, with the same service call and the same ``platform_audit`` row
(``audited``): suspend, resume, change tier, set quotas, emergency storage, run ANALYZE / VACUUM now,
back up now, restore from a backup. Where the API route holds rules of its own (quota overrides and
storage expansions lock the tenant row, then re-evaluate its alerts), the function behind the route
(``set_quota_limits``, ``add_storage_expansion``) is called with the form's values, so the page cannot
drift from the API.

On success: 303 back to the page with ``?done=<code>`` (a fixed message, ``DONE_MESSAGES``). A refused
action re-renders the page with the reason, the values posted and the error's status (400, 409...).
Suspend and restore are destructive: the form asks to type the slug, and the server checks it again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath

from controlplane.audit.routes import audited
from controlplane.backups.models import BackupTrigger
from controlplane.backups.restore import RestoreService
from controlplane.backups.service import BackupService
from controlplane.errors import CardVaultError, ValidationFailed
from controlplane.http.admin import admin_audit_context
from controlplane.http.state import BACKUPS_STATE_KEY, PLATFORM_STATE_KEY, RESTORES_STATE_KEY, TENANTS_STATE_KEY
from controlplane.maintenance import service as maintenance
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import QuotaType
from controlplane.usage.routes import QuotaLimits, StorageExpansion, add_storage_expansion, set_quota_limits
from controlplane.web.admin.tenant_detail import find_tenant, render_detail, tenant_url
from controlplane.web.pages import see_other

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
_GIB = 1024**3
#: Statuses of refusals shown on the page (anything else, e.g. an unknown tenant, is an error page).
_SHOWN = frozenset({400, 409, 422, 423})
T = TypeVar("T")


class MaintenanceFailed(CardVaultError):
    """A maintenance run that ended in an error (the API reports it in its body with ``ok`` false)."""

    status = 409
    code = "maintenance_failed"


def _tenants(request: Request[Any, Any, Any]) -> TenantService:
    tenants: TenantService = request.app.state[TENANTS_STATE_KEY]
    return tenants


def _confirmed(slug: str, form: dict[str, str]) -> None:
    if form.get("confirm", "").strip() != slug:
        raise ValidationFailed(f"Type the slug {slug!r} to confirm.")


def _whole(form: dict[str, str], name: str, label: str) -> int | None:
    """A whole number from the form; blank is None."""
    text = form.get(name, "").strip().replace(",", "").replace("_", "")
    if not text:
        return None
    if not text.isascii() or not text.isdigit():
        raise ValidationFailed(f"{label} must be a whole number.")
    return int(text)


def _struct(data: dict[str, Any], kind: type[T]) -> T:
    """``data`` checked against the API's request type (its limits included), as the API would."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"Some values are not valid: {exc}") from None


async def _act(
    request: Request[Any, Any, Any], slug: str, form: dict[str, str], done: str, action: Callable[[], Awaitable[Any]]
) -> Response[Any]:
    """Run ``action``; back to the page with ``done``, or the page again with why it was refused."""
    await find_tenant(request, slug)  # an unknown slug is a 404 page, whatever the form says
    try:
        await action()
    except CardVaultError as exc:
        if exc.status not in _SHOWN:
            raise
        return await render_detail(request, slug, flash_error=exc.detail, form=form, status_code=exc.status)
    return see_other(request, f"{tenant_url(slug)}?done={done}")


@post("/tenants/{slug:str}/suspend", name="admin_ui_tenant_suspend", status_code=303)
async def suspend(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    async def run() -> None:
        _confirmed(slug, data)
        async with audited(request, "tenant.suspend", slug=slug) as audit:
            audit.result(await _tenants(request).suspend(slug))

    return await _act(request, slug, data, "suspended", run)


@post("/tenants/{slug:str}/resume", name="admin_ui_tenant_resume", status_code=303)
async def resume(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    async def run() -> None:
        async with audited(request, "tenant.resume", slug=slug) as audit:
            audit.result(await _tenants(request).resume(slug))

    return await _act(request, slug, data, "resumed", run)


@post("/tenants/{slug:str}/tier", name="admin_ui_tenant_tier", status_code=303)
async def change_tier(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    async def run() -> None:
        tier = data.get("tier", "")
        async with audited(request, "tenant.update", slug=slug, details={"requested": {"tier": tier}}) as audit:
            audit.result(await _tenants(request).update(slug, tier=tier))

    return await _act(request, slug, data, "tier", run)


@post("/tenants/{slug:str}/quotas", name="admin_ui_tenant_quotas", status_code=303)
async def set_quotas(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    """Every quota's limit from the form (blank: unlimited), through ``PUT /admin/tenants/{slug}/quotas``."""

    async def run() -> None:
        limits = {q.value: _whole(data, f"limit_{q.value}", f"The {q.value} limit") for q in QuotaType}
        body = _struct({"limits": limits}, QuotaLimits)
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        await set_quota_limits(request, platform, slug, body)

    return await _act(request, slug, data, "quotas", run)


@post("/tenants/{slug:str}/storage-expansion", name="admin_ui_tenant_expand", status_code=303)
async def expand(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    """Extra GiB of storage for some hours, through ``POST /admin/tenants/{slug}/quotas/storage-expansion``."""

    async def run() -> None:
        gib = _whole(data, "extra_gib", "The extra storage (GiB)")
        hours = _whole(data, "hours", "The hours")
        if gib is None or hours is None:
            raise ValidationFailed("Give the extra storage in GiB and for how many hours.")
        body = _struct({"extra_bytes": gib * _GIB, "hours": hours, "reason": data.get("reason", "")}, StorageExpansion)
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        await add_storage_expansion(request, platform, slug, body)

    return await _act(request, slug, data, "expanded", run)


@post("/tenants/{slug:str}/maintenance", name="admin_ui_tenant_maintenance", status_code=303)
async def run_maintenance(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    """ANALYZE or VACUUM (ANALYZE) now, as ``POST /admin/tenants/{slug}/maintenance`` (audited
    ``tenant.analyze`` / ``tenant.vacuum``); a failed run is shown as refused (409)."""
    action: Literal["analyze", "vacuum"] = "vacuum" if data.get("action") == "vacuum" else "analyze"

    async def run() -> None:
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        async with audited(request, f"tenant.{action}", slug=slug):
            tenant = await _tenants(request).get(slug)
            (result,) = await maintenance.maintain(platform, [tenant], action, concurrency=1)
        if not result.ok:
            raise MaintenanceFailed(f"{action.upper()} failed: {result.error}")

    return await _act(request, slug, data, action, run)


@post("/tenants/{slug:str}/backup", name="admin_ui_tenant_backup", status_code=303)
async def backup_now(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    """A manual backup, as ``POST /admin/tenants/{slug}/backups``: asked for, then run in the background."""
    backups: BackupService = request.app.state[BACKUPS_STATE_KEY]

    async def run() -> None:
        actor = admin_audit_context(request).actor
        async with audited(request, "tenant.backup", slug=slug, entity="backup") as audit:
            backup = await backups.request(slug, BackupTrigger.MANUAL, requested_by=actor)
            audit.entity_id = backup.id
        backups.start(backup.id)

    return await _act(request, slug, data, "backup", run)


@post("/tenants/{slug:str}/restore", name="admin_ui_tenant_restore", status_code=303)
async def restore(request: Request[Any, Any, Any], slug: FromPath[str], data: Form) -> Response[Any]:
    """Restore from the chosen backup, as ``POST /admin/tenants/{slug}/restore`` (a backup of the live
    database first unless unticked)."""
    restores: RestoreService = request.app.state[RESTORES_STATE_KEY]

    async def run() -> None:
        _confirmed(slug, data)
        try:
            backup_id = uuid.UUID(data.get("backup_id", ""))
        except ValueError:
            raise ValidationFailed("Choose the backup to restore from.") from None
        pre_backup = data.get("pre_backup") == "on"
        actor = admin_audit_context(request).actor
        details = {"backup_id": str(backup_id), "latest": False}
        async with audited(request, "tenant.restore", slug=slug, details=details) as audit:
            op = await restores.restore(slug, backup_id=backup_id, pre_backup=pre_backup, requested_by=actor)
            audit.details["operation"] = op.id
            audit.result(await restores.tenant(op.tenant_id))

    return await _act(request, slug, data, "restored", run)


HANDLERS: list[Any] = [suspend, resume, change_tier, set_quotas, expand, run_maintenance, backup_now, restore]
