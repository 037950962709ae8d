"""HTTP face of deletion certificates under ``/admin`` (behind the admin guard).

- ``GET /admin/deletion-certificates?limit=``: the newest certificates (pending purges are certified first).
- ``GET /admin/deletion-certificates/{tenant}``: the newest certificate of a purged tenant, by its id or
  the slug it had (404 when there is none).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import FromPath, QueryParameter

from controlplane.http.state import PRIVACY_STATE_KEY
from controlplane.privacy.models import DeletionCertificate
from controlplane.privacy.service import Privacy

CertificateLimit = Annotated[int, QueryParameter(ge=1, le=500, description="certificates, newest first")]


def _privacy(request: Request[Any, Any, Any]) -> Privacy:
    privacy: Privacy = request.app.state[PRIVACY_STATE_KEY]
    return privacy


@get(
    "/admin/deletion-certificates",
    tags=["privacy"],
    summary="Deletion certificates of purged tenants, newest first",
)
async def list_certificates(
    request: Request[Any, Any, Any], limit: CertificateLimit = 100
) -> list[DeletionCertificate]:
    privacy = _privacy(request)
    await privacy.certificates.issue_pending()
    return await privacy.certificates.newest(limit)


@get(
    "/admin/deletion-certificates/{tenant:str}",
    tags=["privacy"],
    summary="The deletion certificate of a purged tenant (by tenant id, or the slug it had)",
)
async def get_certificate(request: Request[Any, Any, Any], tenant: FromPath[str]) -> DeletionCertificate:
    privacy = _privacy(request)
    await privacy.certificates.issue_pending()
    return (await privacy.certificates.find(tenant))[0]


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_PRIVACY_HANDLERS = [list_certificates, get_certificate]
