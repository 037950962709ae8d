"""GDPR operations as the API and the command line use them.

``Privacy`` holds the long-lived parts (exports and their workers, erasures, deletion certificates, audit
retention) and the leader jobs that keep them going. ``TenantPrivacy`` is one authenticated tenant request
(its connection and transaction, principal and audit context) asking for exports, downloads and erasures:
it checks who may do what, writes the tenant's audit entries in the request's transaction, and leaves
what must wait for the commit (making the export, scrubbing the control database) to ``after_commit``.
"""

from __future__ import annotations

import uuid

from controlplane.audit import repository as audit
from controlplane.auth.models import Permission, PrincipalKind
from controlplane.context import TenantRequest
from controlplane.errors import NotFound, PermissionDenied
from controlplane.paging import MAX_ID
from controlplane.platform import Platform
from controlplane.privacy import erasure_repository
from controlplane.privacy.certificates import Certificates
from controlplane.privacy.erasure import Erasure
from controlplane.privacy.exports import (
    TENANT_EXPORT_PERMISSIONS,
    USER_EXPORT_PERMISSIONS,
    Download,
    Exports,
    require,
)
from controlplane.privacy.models import ErasureResult, Export, ExportCreated, ExportKind
from controlplane.privacy.retention import AuditRetention
from controlplane.storage import Storage


class Privacy:
    """Exports, erasures, deletion certificates and audit retention of the platform."""

    def __init__(self, platform: Platform, storage: Storage | None = None) -> None:
        self.platform = platform
        self.exports = Exports(platform, storage)
        #: The tenants' stored files (card images), as the tenant API keeps them.
        self.storage = self.exports.storage
        self.erasure = Erasure(platform, self.exports)
        self.certificates = Certificates(platform, self.exports)
        self.retention = AuditRetention(platform)

    async def stop(self) -> None:
        await self.exports.stop()

    def for_request(self, request: TenantRequest) -> TenantPrivacy:
        return TenantPrivacy(self, request)


class TenantPrivacy:
    """What one tenant request may do about exports and erasures."""

    def __init__(self, privacy: Privacy, request: TenantRequest) -> None:
        self._privacy = privacy
        self._exports = privacy.exports
        self._request = request
        self._to_make: list[uuid.UUID] = []
        self._to_finish: list[uuid.UUID] = []
        self._to_discard: list[str] = []

    @property
    def changed_principals(self) -> bool:
        """A user was erased: once committed, the tenant's cached principals must go."""
        return bool(self._to_finish)

    async def after_commit(self) -> None:
        """Once the request's transaction has committed: scrub the control database of the users it erased,
        delete the files it let go (an object left by a failure here is an orphan storage hygiene removes),
        and make the exports it asked for (in the background)."""
        for erasure_id in self._to_finish:
            await self._privacy.erasure.finish(erasure_id)
        for key in self._to_discard:
            await self._privacy.storage.delete(self._request.tenant.id, key)
        for export_id in self._to_make:
            self._exports.kick(export_id)

    def _own_user_id(self) -> int:
        principal = self._request.principal
        if principal.kind is not PrincipalKind.USER or principal.user_id is None:
            raise PermissionDenied(
                f"your own data belongs to a logged-in user; this {principal.kind.value} has no account of its own",
                permission=Permission.SELF.value,
            )
        return principal.user_id

    async def _asked(self, kind: ExportKind, subject: int | None) -> ExportCreated:
        request = self._request
        created = await self._exports.request(request.tenant, kind, subject, request.audit.actor)
        details = {"kind": kind.value} | ({"user_id": subject} if subject is not None else {})
        await audit.record_tenant(request.conn, request.audit, "export.request", "export", created.id, details)
        self._to_make.append(created.id)
        return created

    async def export_tenant(self) -> ExportCreated:
        require(self._request.principal, TENANT_EXPORT_PERMISSIONS, "exporting the tenant")
        return await self._asked(ExportKind.TENANT, None)

    async def export_me(self) -> ExportCreated:
        return await self._asked(ExportKind.USER, self._own_user_id())

    async def export_user(self, user_id: int) -> ExportCreated:
        require(self._request.principal, USER_EXPORT_PERMISSIONS, "exporting a user's data")
        if not 1 <= user_id <= MAX_ID or await erasure_repository.user_row(self._request.conn, user_id) is None:
            raise NotFound(f"no user with id {user_id}", resource="user", id=user_id)
        return await self._asked(ExportKind.USER, user_id)

    async def list_exports(self, limit: int) -> list[Export]:
        require(self._request.principal, TENANT_EXPORT_PERMISSIONS, "listing the tenant's exports")
        records = await self._exports.list_exports(self._request.tenant.id, limit=limit)
        return [r.public() for r in records]

    async def my_exports(self, limit: int) -> list[Export]:
        subject = self._request.principal.subject
        records = await self._exports.list_exports(self._request.tenant.id, requested_by=subject, limit=limit)
        return [r.public() for r in records]

    async def get_export(self, export_id: uuid.UUID) -> Export:
        record = await self._exports.get(self._request.tenant.id, export_id)
        if not self._exports.may_read(record, self._request.principal):
            raise NotFound(f"no export {export_id}", resource="export", id=str(export_id))
        return record.public()

    async def download(self, export_id: uuid.UUID, token: str) -> Download:
        request = self._request
        started = await self._exports.open_download(request.tenant.id, export_id, token, request.principal)
        details = {"kind": started.record.kind.value, "bytes": started.record.bytes}
        await audit.record_tenant(request.conn, request.audit, "export.download", "export", export_id, details)
        return started

    async def erase_user(self, user_id: int, confirm_email: str, *, delete_files: bool = False) -> ErasureResult:
        result, files = await self._privacy.erasure.erase(
            self._request, user_id, confirm_email, delete_files=delete_files
        )
        self._to_finish.append(result.erasure_id)
        self._to_discard.extend(files)
        return result
