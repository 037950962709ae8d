"""Finding tenants and holding them still: reads by slug, and the tenant's advisory lock.

Every lifecycle operation runs under the tenant's advisory lock on the control database, taken by id
and held by the session that does the work (a crash releases it, which is how the reconciler tells an
interrupted operation from a running one). Locking by slug reads the tenant again under the lock, so
a slug given to another tenant meanwhile is refused rather than acted on. The change listeners run when
the lock is released, whatever the outcome. ``TenantLocks`` is the base of ``TenantService``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.errors import OperationInProgress, TenantNotFound
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN, Tenant, TenantStatus, Tier


def tenant_lock_key(tenant_id: uuid.UUID) -> int:
    """The advisory-lock key that serialises operations on one tenant."""
    return int.from_bytes(tenant_id.bytes[:8], "big", signed=True)


class TenantLocks:
    """Reads and locks of tenants (the base of ``TenantService``)."""

    def __init__(self, platform: Platform) -> None:
        self._p = platform
        self._listeners: list[Callable[[uuid.UUID], None]] = []

    def on_change(self, listener: Callable[[uuid.UUID], None]) -> None:
        """Call ``listener(tenant_id)`` after every operation on a tenant, whatever its outcome.

        This process learns of its own changes at once (its registry cache and pools must not serve a
        just-suspended tenant); other replicas learn of them through NOTIFY.
        """
        self._listeners.append(listener)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, slug: str) -> Tenant:
        async with self._p.control.connection() as conn:
            return await self.require(conn, slug)

    async def list(
        self,
        *,
        status: TenantStatus | None = None,
        tier: Tier | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[Tenant]:
        async with self._p.control.connection() as conn:
            return await registry.list_tenants(conn, status=status, tier=tier, after_slug=after, limit=limit)

    async def require(self, conn: AsyncConn, slug: str) -> Tenant:
        # A string that is no valid slug names no tenant (and may not even be storable text, e.g. NUL).
        valid = isinstance(slug, str) and SLUG_PATTERN.fullmatch(slug) is not None
        tenant = await registry.get_by_slug(conn, slug) if valid else None
        if tenant is None:
            raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
        return tenant

    @asynccontextmanager
    async def locked(self, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConn]:
        """A control connection holding the tenant's lock for the whole operation."""
        async with self._p.control.connection() as conn:
            key = tenant_lock_key(tenant_id)
            if not await db.try_advisory_lock(conn, key):
                raise OperationInProgress("another operation on this tenant is in progress; retry shortly")
            try:
                yield conn
            finally:
                await db.advisory_unlock(conn, key)
                for listener in self._listeners:
                    listener(tenant_id)

    @asynccontextmanager
    async def locked_slug(
        self, slug: str, *, expect: uuid.UUID | None = None
    ) -> AsyncIterator[tuple[AsyncConn, Tenant]]:
        """The tenant ``slug`` names, read again under its lock (the lock is taken by id).

        Between the first lookup and the lock, a rename plus a new tenant taking the slug would make
        the slug name another tenant than the one locked: that is refused (retry), never acted on.
        ``expect``: the id the caller listed the tenant under (the reconciler); another one is refused too.
        """
        async with self._p.control.connection() as conn:
            seen = await self.require(conn, slug)
        expected = seen.id if expect is None else expect
        async with self.locked(expected) as conn:
            tenant = await self.require(conn, slug)
            if tenant.id != expected:
                raise OperationInProgress(f"the slug {slug!r} was given to another tenant meanwhile; retry", slug=slug)
            yield conn, tenant
