"""``CardApi``: the CardVault tenant API (``controlplane.cards``) mounted on a small Litestar app with test
providers for its routing contract, against real provisioned tenants (used by the cards, images and
quota tests).

``tenant`` comes from the provisioned registry row, ``tenant_db`` is a connection from a per-tenant
``AsyncConnectionPool`` logged in *as the tenant's own role* to its own database (committed after the
handler, rolled back on an error, like the real one), ``quota_limits`` the registry's (overridable per
test) and ``storage`` a ``LocalStorage`` in a temporary directory. It is served through
``httpx.ASGITransport`` in the test's event loop, so concurrent requests really run concurrently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath
from psycopg import conninfo, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from controlplane import db
from controlplane.cards.routes import TENANT_API_HANDLERS
from controlplane.cards.service import CardVault
from controlplane.context import TenantContext
from controlplane.db import AsyncConn
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.http.state import VAULTS_STATE_KEY
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import QuotaType, Tenant, fixed_limits
from controlplane.storage.local import LocalStorage
from tests.conftest import drop_everything_made_by, make_settings

Json = dict[str, Any]

#: Image size limit of the test app (small, so the oversize test sends little).
MAX_IMAGE_BYTES = 64 * 1024


#: Tables emptied between tests (all of them reference only each other).
_TENANT_TABLES = "cards, players, teams, manufacturers, files, users, audit_log, auth_sessions, api_keys"


@dataclasses.dataclass
class ApiTenant:
    """A provisioned tenant as the test app serves it."""

    record: Tenant
    pool: AsyncConnectionPool[AsyncConn]  # as the tenant's own login role, to its own database
    admin_dsn: str  # as the superuser, to the tenant's database (inspection, lock gates, resets)
    default_limits: dict[QuotaType, int | None]
    limits: dict[QuotaType, int | None]

    @property
    def context(self) -> TenantContext:
        return TenantContext.of(self.record)


class CardApi:
    """The test app, its tenants and an HTTP client; ``url(slug, "/cards")`` -> ``/t/slug/api/cards``."""

    def __init__(self, platform: Platform, admin_dsn: str, storage_root: Path) -> None:
        self.platform = platform
        self.service = TenantService(platform)
        self.admin_dsn = admin_dsn
        self.storage = LocalStorage(storage_root)
        self.tenants: dict[str, ApiTenant] = {}
        self.app = self._build_app()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://testserver")

    def _build_app(self) -> Litestar:
        tenants = self.tenants
        storage = self.storage

        def provide_tenant(tenant_slug: FromPath[str]) -> TenantContext:
            return tenants[tenant_slug].context

        @asynccontextmanager
        async def open_vault(request: Request[Any, Any, Any]) -> AsyncIterator[CardVault]:
            tenant = tenants[request.path_params["tenant_slug"]]
            # The pool's block commits when the handler's block exits and rolls back when it raises.
            async with tenant.pool.connection() as conn:
                yield CardVault(
                    conn,
                    tenant.record.id,
                    storage=storage,
                    quota_limits=fixed_limits(tenant.limits),
                    max_image_bytes=MAX_IMAGE_BYTES,
                )

        router = Router(path="/t/{tenant_slug:str}/api", route_handlers=TENANT_API_HANDLERS)
        return Litestar(
            route_handlers=[router],
            dependencies={"tenant": Provide(provide_tenant, sync_to_thread=False)},
            exception_handlers=EXCEPTION_HANDLERS,
            state=State({VAULTS_STATE_KEY: open_vault}),
        )

    async def add_tenant(self, slug: str, tier: str = "starter") -> ApiTenant:
        """Provision a real tenant and serve it at ``/t/<slug>/api``."""
        record = await self.service.create(name=slug.title(), slug=slug, tier=tier)
        async with self.platform.control.connection() as conn:
            encrypted = await registry.role_password_encrypted(conn, record.id)
            quotas = await registry.get_quotas(conn, record.id)
        assert encrypted is not None
        password = self.platform.box.decrypt(encrypted)
        dsn = conninfo.make_conninfo(
            self.admin_dsn, user=record.role_name, password=password, dbname=record.database_name
        )
        pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            dsn, min_size=1, max_size=25, open=False, kwargs={"row_factory": dict_row, "autocommit": False}
        )
        await pool.open(wait=True)
        limits = {q.quota_type: q.quota_limit for q in quotas}
        tenant = ApiTenant(
            record=record,
            pool=pool,
            admin_dsn=conninfo.make_conninfo(self.admin_dsn, dbname=record.database_name),
            default_limits=dict(limits),
            limits=limits,
        )
        self.tenants[slug] = tenant
        return tenant

    async def reset(self) -> None:
        """Empty every tenant's tables (its usage counters follow) and storage; restore the limits."""
        for tenant in self.tenants.values():
            async with await psycopg.AsyncConnection.connect(tenant.admin_dsn, autocommit=True) as conn:
                await conn.execute(f"TRUNCATE {_TENANT_TABLES} RESTART IDENTITY")
            tenant.limits.clear()
            tenant.limits.update(tenant.default_limits)
            shutil.rmtree(self.storage.tenant_dir(tenant.record.id), ignore_errors=True)

    def url(self, slug: str, path: str) -> str:
        return f"/t/{slug}/api{path}"

    async def request(self, method: str, slug: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, self.url(slug, path), **kwargs)

    async def create(self, slug: str, path: str, body: Json) -> Json:
        response = await self.request("POST", slug, path, json=body)
        assert response.status_code == 201, response.text
        created: Json = response.json()
        return created

    async def sql(self, slug: str, query: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Json]:
        """Run ``query`` in the tenant's database as its own role (committed)."""
        async with self.tenants[slug].pool.connection() as conn:
            cur = await conn.execute(query, params or None)
            return await cur.fetchall() if cur.description else []

    async def close(self) -> None:
        await self.client.aclose()
        for tenant in self.tenants.values():
            await tenant.pool.close()


@asynccontextmanager
async def open_card_api(
    admin_dsn: str, control_template: str, tenant_template: str, storage_root: Path, slugs: tuple[str, ...]
) -> AsyncIterator[CardApi]:
    """A control database of its own, the tenants ``slugs`` provisioned in it, and the test app.

    Shared by the tests of a module (provisioning per test would dominate the run time); ``reset``
    gives each test empty tenants. Everything made is dropped at the end, as the conftest does.
    """
    name = f"cvtest_ctl_cards_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(control_template))
        )
    control_dsn = db.with_database(admin_dsn, name)
    try:
        async with Platform.open(make_settings(control_dsn, tenant_template), migrate=False) as platform:
            api = CardApi(platform, admin_dsn, storage_root)
            try:
                for slug in slugs:
                    await api.add_tenant(slug)
                yield api
            finally:
                await api.close()
    finally:
        await asyncio.to_thread(drop_everything_made_by, control_dsn)
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def ts(value: str) -> datetime:
    """A timestamp from a response (compared as instants, not as strings)."""
    return datetime.fromisoformat(value)


def assert_error(response: httpx.Response, status: int, code: str) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: Json = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body
