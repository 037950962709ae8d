"""HTTP face of exports and erasures in the tenant API (``/t/{slug}/api`` and ``/api``).

- ``POST /exports`` (tenant_admin) -> 202: a whole-tenant export is made in the background; the answer
  carries its one-time ``download_url``. ``GET /exports``, ``GET /exports/{id}``: the tenant's exports.
- ``POST /me/export`` (any logged-in user), ``POST /users/{id}/export`` (users:read and audit:read)
  -> 202: one user's data. ``GET /me/exports``: the exports one asked for.
- ``GET /exports/{id}/download?token=``: the archive, once, while the link lasts; with the credentials of
  whoever asked for it (or of someone who may make such an export) and the token. A wrong token or
  another tenant's export is a 404, a used or expired link a 410.
- ``POST /users/{id}/erase {confirm_email, delete_files?}`` (users:manage): erase a user (with
  ``delete_files``, the images of the cards they created too).

Handlers take one dependency, ``privacy``: a ``TenantPrivacy`` on the request's connection, committed
after the handler returns (rolled back if it raises); after the commit the requested exports start and
erased users are scrubbed from the control database and dropped from the principal caches.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from controlplane.auth.models import Permission
from controlplane.auth.service import Authenticator
from controlplane.http.params import Limit
from controlplane.http.replica_routing import PRIMARY_ONLY
from controlplane.http.state import AUTH_STATE_KEY, PRIVACY_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.http.tenant_request import open_tenant_request
from controlplane.paging import TENANT_PAGES
from controlplane.privacy.models import EraseRequest, ErasureResult, Export, ExportCreated
from controlplane.privacy.service import Privacy, TenantPrivacy

log = logging.getLogger(__name__)
Deps = NamedDependency[TenantPrivacy]
Token = Annotated[str, QueryParameter(min_length=1, max_length=200, description="the token of the download link")]
#: Who may ask for, list and see a whole-tenant export (the service also checks every permission the
#: archive needs: users, audit, cards, catalog).
EXPORTS = requires(Permission.AUDIT_READ)


async def provide_privacy(request: Request[Any, Any, Any]) -> AsyncIterator[TenantPrivacy]:
    """The request's ``TenantPrivacy``; after its transaction has committed, what must follow the commit.

    A failure after the commit is logged, not answered: what the request did is committed, and the
    leader's jobs finish what is left (pending exports, pending erasures).
    """
    privacy: Privacy = request.app.state[PRIVACY_STATE_KEY]
    async with open_tenant_request(request) as tenant_request:
        scoped = privacy.for_request(tenant_request)
        yield scoped
    try:
        if scoped.changed_principals:
            auth: Authenticator = request.app.state[AUTH_STATE_KEY]
            await auth.principals_changed(tenant_request.tenant.id)
        await scoped.after_commit()
    except Exception:
        log.error("privacy: work after the commit failed; the leader job finishes it", exc_info=True)


_DEPENDENCIES = {"privacy": Provide(provide_privacy)}


@post(
    "/exports",
    opt=EXPORTS,
    status_code=202,
    dependencies=_DEPENDENCIES,
    tags=["privacy"],
    summary="Export the whole tenant (every table as JSON and CSV, every file, a manifest); made in the background",
)
async def export_tenant(privacy: Deps) -> ExportCreated:
    return await privacy.export_tenant()


@get("/exports", opt=EXPORTS, dependencies=_DEPENDENCIES, tags=["privacy"], summary="The tenant's exports")
async def list_exports(privacy: Deps, limit: Limit = TENANT_PAGES.default) -> list[Export]:
    return await privacy.list_exports(limit)


@get(
    "/exports/{export_id:uuid}",
    opt=requires(Permission.SELF),
    dependencies=_DEPENDENCIES,
    tags=["privacy"],
    summary="One export (whoever asked for it, or a tenant_admin)",
)
async def get_export(privacy: Deps, export_id: FromPath[uuid.UUID]) -> Export:
    return await privacy.get_export(export_id)


@get(
    "/exports/{export_id:uuid}/download",
    opt={**requires(Permission.SELF), **PRIMARY_ONLY},  # it writes an audit row: never on a read replica
    dependencies=_DEPENDENCIES,
    tags=["privacy"],
    summary="Download the export's zip archive once, with the link's token (410 when used or expired)",
)
async def download_export(privacy: Deps, export_id: FromPath[uuid.UUID], token: Token) -> Response[Any]:
    started = await privacy.download(export_id, token)
    headers = {"Content-Disposition": f'attachment; filename="{started.filename}"'}
    if started.record.bytes is not None:
        headers["Content-Length"] = str(started.record.bytes)
    if started.record.sha256 is not None:
        headers["X-Archive-SHA256"] = started.record.sha256
    return Stream(started.chunks, media_type="application/zip", headers=headers)


@post(
    "/me/export",
    opt=requires(Permission.SELF),
    status_code=202,
    dependencies=_DEPENDENCIES,
    tags=["privacy"],
    summary="Export my own data (my user row, sessions, API keys, audit entries, cards); made in the background",
)
async def export_me(privacy: Deps) -> ExportCreated:
    return await privacy.export_me()


@get("/me/exports", opt=requires(Permission.SELF), dependencies=_DEPENDENCIES, tags=["privacy"], summary="My exports")
async def my_exports(privacy: Deps, limit: Limit = TENANT_PAGES.default) -> list[Export]:
    return await privacy.my_exports(limit)


@post(
    "/users/{user_id:int}/export",
    opt=requires(Permission.USERS_READ),
    status_code=202,
    dependencies=_DEPENDENCIES,
    tags=["privacy"],
    summary="Export one user's data (GDPR data access); made in the background",
)
async def export_user(privacy: Deps, user_id: FromPath[int]) -> ExportCreated:
    return await privacy.export_user(user_id)


@post(
    "/users/{user_id:int}/erase",
    opt=requires(Permission.USERS_MANAGE),
    status_code=200,
    dependencies=_DEPENDENCIES,
    tags=["privacy"],
    summary="Erase a user: their row, sessions, keys and exports go, their audit entries are pseudonymised",
)
async def erase_user(privacy: Deps, user_id: FromPath[int], data: JSONBody[EraseRequest]) -> ErasureResult:
    return await privacy.erase_user(user_id, data.confirm_email, delete_files=data.delete_files)


#: Mounted by the app with the tenant API (under ``/t/{slug}/api`` and ``/api``).
TENANT_PRIVACY_HANDLERS = [
    export_tenant,
    list_exports,
    get_export,
    download_export,
    export_me,
    my_exports,
    export_user,
    erase_user,
]
