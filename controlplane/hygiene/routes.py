"""Admin HTTP face of storage hygiene (behind ``admin_guard``).

- ``GET /admin/storage/hygiene?tenant=&limit=``: open findings, newest first: files in quarantine (when
  each is deleted) and rows whose object is missing (when each row is removed), with fleet totals.
- ``POST /admin/storage/hygiene/run?fix=&tenant=``: one run now, over every tenant or one; ``fix=false``
  only reports. A fixing run is audited (``storage.hygiene``); 409 ``operation_in_progress`` while another
  run (the leader's job, a CLI) is going.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.params import FromQuery, QueryParameter

from controlplane.audit.routes import audited
from controlplane.http.state import HYGIENE_STATE_KEY
from controlplane.hygiene.models import HygieneFindings, HygieneReport
from controlplane.hygiene.service import StorageHygiene

Slug = Annotated[str | None, QueryParameter(min_length=1, max_length=63, pattern=r"^[^\x00]*$")]


def _hygiene(request: Request[Any, Any, Any]) -> StorageHygiene:
    hygiene: StorageHygiene = request.app.state[HYGIENE_STATE_KEY]
    return hygiene


@get("/admin/storage/hygiene", tags=["storage"], summary="Open storage hygiene findings: quarantined and missing files")
async def hygiene_findings(
    request: Request[Any, Any, Any],
    tenant: Slug = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> HygieneFindings:
    return await _hygiene(request).findings(tenant, limit)


@post(
    "/admin/storage/hygiene/run",
    status_code=200,
    tags=["storage"],
    summary="Run storage hygiene now (fix=false: report only)",
)
async def run_hygiene(
    request: Request[Any, Any, Any], fix: FromQuery[bool] = True, tenant: Slug = None
) -> HygieneReport:
    hygiene = _hygiene(request)
    if not fix:
        return await hygiene.run(fix=False, slug=tenant)
    async with audited(request, "storage.hygiene", slug=tenant) as audit:
        report = await hygiene.run(fix=True, slug=tenant)
        audit.details.update(summary=report.describe())
        return report


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_HYGIENE_HANDLERS = [hygiene_findings, run_hygiene]
