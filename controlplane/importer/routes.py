"""``POST /admin/tenants/{slug}/import``: a legacy installation uploaded and imported into a tenant.

``multipart/form-data`` with ``database`` (the SQLite file) and optionally ``uploads`` (the installation's
``uploads/`` folder as a tar, possibly compressed, or a zip); ``?dry_run=true`` answers the report of
what the import would do and writes nothing. The parts are spooled to a private working directory under
``CARDVAULT_DATA_DIR`` (never held in memory), unpacked there and removed afterwards, whatever happens.
Super-admins and the automation token only (the ``/admin`` guard); audited as ``tenant.import``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from litestar import MediaType, Request, Response, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery

from controlplane.audit.routes import audited
from controlplane.http.admin import admin_audit_context
from controlplane.importer.archive import unpack
from controlplane.importer.errors import InvalidLegacyFile
from controlplane.importer.models import ImportReport
from controlplane.importer.service import LegacyImporter, summary
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService

#: Largest upload accepted (the SQLite file and the uploads archive together).
MAX_UPLOAD_BYTES = 8 * 2**30
_CHUNK = 1 << 20


@dataclasses.dataclass
class ImportUpload:
    #: The installation's SQLite file.
    database: UploadFile
    #: Its ``uploads/`` folder as a tar (.tar, .tar.gz, .tgz, .tar.xz) or a zip.
    uploads: UploadFile | None = None


def _undecodable(_: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[dict[str, Any]]:
    """Litestar decodes a multipart part sent without a file name as UTF-8 text, and fails on anything else."""
    detail = "send the SQLite file and the uploads archive as file parts (with a filename); a text part was not UTF-8"
    return Response({"error": "validation_failed", "detail": detail}, status_code=400, media_type=MediaType.JSON)


async def _save(upload: UploadFile, path: Path) -> None:
    """Copy an uploaded part to ``path`` chunk by chunk (parts over 1 MiB are already on disk)."""
    with path.open("wb") as sink:
        while chunk := await upload.read(_CHUNK):
            await asyncio.to_thread(sink.write, chunk)


@post(
    "/admin/tenants/{slug:str}/import",
    status_code=200,
    tags=["tenants"],
    request_max_body_size=MAX_UPLOAD_BYTES,
    exception_handlers={UnicodeDecodeError: _undecodable},
    summary="Import a legacy CardVault installation (SQLite file + uploads archive) into a tenant",
)
async def import_legacy(
    request: Request[Any, Any, Any],
    slug: FromPath[str],
    data: Annotated[ImportUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    platform: NamedDependency[Platform],
    tenants: NamedDependency[TenantService],
    dry_run: FromQuery[bool] = False,
) -> ImportReport:
    if not isinstance(data.database, UploadFile):
        raise InvalidLegacyFile("send the SQLite file as the multipart file part 'database'")
    details = {"file": data.database.filename, "uploads": data.uploads is not None, "dry_run": dry_run}
    async with audited(request, "tenant.import", slug=slug, details=details) as audit:
        scratch = platform.settings.data_dir / "imports"
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True, mode=0o700)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="upload-", dir=scratch))
        try:
            source = work / "legacy.sqlite"
            await _save(data.database, source)
            uploads = None
            if isinstance(data.uploads, UploadFile):
                archive = work / "uploads.archive"
                await _save(data.uploads, archive)
                uploads = await asyncio.to_thread(unpack, archive, work / "uploads")
            importer = LegacyImporter(platform, tenants)
            report = await importer.run(slug, source, uploads, dry_run=dry_run, actor=admin_audit_context(request))
        finally:
            await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
        audit.details.update(summary(report))
        return report


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_IMPORT_HANDLERS = [import_legacy]
