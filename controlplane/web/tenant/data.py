"""The workspace's data (``{base}/data``): whole-workspace exports and their one-time download links,
backups, and erasing a user.

Each part needs what its API needs and calls what its API calls, so checks and audit rows are the
API's: exports ``audit:read`` (and every permission the archive needs, checked by ``privacy.service``;
``export.request``, ``export.download``), backups ``settings:manage`` (``backup.request``), erasure
``users:manage`` (``user.erase``; the service applies the accounts rules and checks the email typed back).
As ``privacy.routes.provide_privacy`` does after its commit, a page commits first and then drops the
cached principals of an erased user, finishes the erasure and starts the export.

An export's download link holds a one-time token the server keeps only hashed: it is shown once, on the
page answering the form. It points at this app's own download route (``.../data/exports/{id}/download``),
which the browser's cookies reach (the API's link needs a bearer credential).
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Stream, Template

from controlplane.audit import repository as audit
from controlplane.auth.models import Permission
from controlplane.auth.service import Authenticator
from controlplane.backups.models import BackupTrigger, TenantBackup
from controlplane.backups.service import BackupService
from controlplane.context import TenantRequest
from controlplane.errors import CardVaultError
from controlplane.http.state import AUTH_STATE_KEY, BACKUPS_STATE_KEY, PRIVACY_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.privacy.models import ExportCreated
from controlplane.privacy.routes import EXPORTS
from controlplane.privacy.service import Privacy, TenantPrivacy
from controlplane.web.pages import page, see_other
from controlplane.web.sessions import tenant_base
from controlplane.web.tenant.users import REFUSALS, accounts_of

log = logging.getLogger(__name__)
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Ctx = NamedDependency[TenantRequest]
Token = Annotated[str, QueryParameter(min_length=1, max_length=200)]

#: Exports, backups and users (to erase) listed at most.
LISTED = 50
DONE = {
    "backup": "A backup was asked for; it runs in the background.",
    "erased": "The user was erased.",
}


def _privacy(request: Request[Any, Any, Any], ctx: TenantRequest) -> TenantPrivacy:
    privacy: Privacy = request.app.state[PRIVACY_STATE_KEY]
    return privacy.for_request(ctx)


def _backups(request: Request[Any, Any, Any]) -> BackupService:
    backups: BackupService = request.app.state[BACKUPS_STATE_KEY]
    return backups


async def _settle(request: Request[Any, Any, Any], ctx: TenantRequest, scoped: TenantPrivacy) -> None:
    """Commit, then what ``provide_privacy`` does after its commit (a failure there is the leader's to finish)."""
    await ctx.conn.commit()
    try:
        if scoped.changed_principals:
            auth: Authenticator = request.app.state[AUTH_STATE_KEY]
            await auth.principals_changed(ctx.tenant.id)
        await scoped.after_commit()
    except Exception:
        log.error("privacy: work after the commit failed; the leader job finishes it", exc_info=True)


def download_path(request: Request[Any, Any, Any], created: ExportCreated) -> str:
    query = urlencode({"token": created.download_token})
    return f"{tenant_base(request.scope)}/data/exports/{created.id}/download?{query}"


async def data_page(
    request: Request[Any, Any, Any],
    ctx: TenantRequest,
    *,
    flash_error: str | None = None,
    status_code: int = 200,
    created: ExportCreated | None = None,
) -> Template:
    """The data page; each section only for whoever may use it (backups, erasure), ``created``'s link once."""
    principal = ctx.principal
    exports = await _privacy(request, ctx).list_exports(LISTED)
    backups = None
    if principal.can(Permission.SETTINGS_MANAGE):
        found = await _backups(request).list_for_tenant(ctx.tenant.id, LISTED)
        backups = [TenantBackup.of(b) for b in found]
    users = None
    if principal.can(Permission.USERS_MANAGE):
        users = (await accounts_of(request, ctx).list_users(LISTED, None)).items
    return page(
        request,
        "tenant/data.html",
        principal=principal,
        title="Data",
        exports=exports,
        backups=backups,
        users=users,
        my_id=principal.user_id,
        created=created,
        created_link=download_path(request, created) if created is not None else None,
        flash=DONE.get(request.query_params.get("done", "")) if request.method == "GET" else None,
        flash_error=flash_error,
        status_code=status_code,
    )


@get("/data", name="tenant_ui_data", opt=EXPORTS)
async def show(request: Request[Any, Any, Any], tenant_request: Ctx) -> Template:
    return await data_page(request, tenant_request)


@post("/data/exports", name="tenant_ui_data_export", opt=EXPORTS, status_code=200)
async def request_export(request: Request[Any, Any, Any], tenant_request: Ctx) -> Template:
    scoped = _privacy(request, tenant_request)
    try:
        created = await scoped.export_tenant()
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        await tenant_request.conn.rollback()
        return await data_page(request, tenant_request, flash_error=exc.detail, status_code=exc.status)
    await _settle(request, tenant_request, scoped)
    return await data_page(request, tenant_request, created=created)


@get(
    "/data/exports/{export_id:uuid}/download",
    name="tenant_ui_data_export_download",
    opt=requires(Permission.SELF),
)
async def download(
    request: Request[Any, Any, Any], tenant_request: Ctx, export_id: FromPath[uuid.UUID], token: Token
) -> Response[Any]:
    """The archive, once, as ``GET .../api/exports/{id}/download`` serves it (a wrong token: 404; used: 410)."""
    started = await _privacy(request, tenant_request).download(export_id, token)
    headers = {"Content-Disposition": f'attachment; filename="{started.filename}"'}
    if started.record.bytes is not None:
        headers["Content-Length"] = str(started.record.bytes)
    if started.record.sha256 is not None:
        headers["X-Archive-SHA256"] = started.record.sha256
    return Stream(started.chunks, media_type="application/zip", headers={**headers, "Cache-Control": "no-store"})


@post("/data/backups", name="tenant_ui_data_backup", opt=requires(Permission.SETTINGS_MANAGE), status_code=303)
async def request_backup(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
    ctx, backups = tenant_request, _backups(request)
    try:
        backup = await backups.request(ctx.tenant.id, BackupTrigger.TENANT, requested_by=ctx.audit.actor)
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        return await data_page(request, ctx, flash_error=exc.detail, status_code=exc.status)
    await audit.record_tenant(ctx.conn, ctx.audit, "backup.request", entity="backup", entity_id=str(backup.id))
    backups.start(backup.id)
    return see_other(request, f"{tenant_base(request.scope)}/data?done=backup")


async def _erase_page(
    request: Request[Any, Any, Any],
    ctx: TenantRequest,
    user_id: int,
    *,
    flash_error: str | None = None,
    status: int = 200,
) -> Template:
    user = await accounts_of(request, ctx).get_user(user_id)
    return page(
        request,
        "tenant/data_erase.html",
        principal=ctx.principal,
        title=f"Erase {user.email}",
        user=user,
        flash_error=flash_error,
        status_code=status,
    )


@get("/data/erase/{user_id:int}", name="tenant_ui_data_erase_form", opt=requires(Permission.USERS_MANAGE))
async def erase_form(request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int]) -> Template:
    return await _erase_page(request, tenant_request, user_id)


@post("/data/erase/{user_id:int}", name="tenant_ui_data_erase", opt=requires(Permission.USERS_MANAGE), status_code=303)
async def erase(
    request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int], data: Form
) -> Response[Any]:
    """Erase the user; ``confirm`` must be their email (the service checks it, whatever the browser did)."""
    scoped = _privacy(request, tenant_request)
    try:
        await scoped.erase_user(user_id, data.get("confirm", "")[:320], delete_files=data.get("delete_files") == "on")
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        await tenant_request.conn.rollback()
        return await _erase_page(request, tenant_request, user_id, flash_error=exc.detail, status=exc.status)
    await _settle(request, tenant_request, scoped)
    return see_other(request, f"{tenant_base(request.scope)}/data?done=erased")


HANDLERS: list[Any] = [show, request_export, download, request_backup, erase_form, erase]
