"""Fixtures only the integration tests need (the PostgreSQL ones come from ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import conninfo, sql

from controlplane.app import create_app
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE, SchemaScripts
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.cards_support import CardApi, open_card_api
from tests.integration.schema_support import base_schema
from tests.redis_harness import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: ``CARDVAULT_TEST_REDIS_URL``, else a private ``redis-server`` for the session."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def admin_dsn(request: pytest.FixtureRequest) -> str:
    """Superuser DSN of the test server: ``CARDVAULT_TEST_DATABASE_URL``, else the harness's."""
    url = os.environ.get("CARDVAULT_TEST_DATABASE_URL", "").strip()
    if url:
        return url
    return str(request.getfixturevalue("pg_admin_dsn"))


@pytest.fixture
def new_database(admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Factory of empty databases (``cvtest_*``), all dropped at teardown; returns their DSNs."""
    created: list[str] = []

    def create() -> str:
        name = f"cvtest_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return conninfo.make_conninfo(admin_dsn, dbname=name)

    yield create
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> SchemaScripts:
    return SchemaScripts(base_schema(tmp_path_factory.mktemp("schema") / "tenant_schema"), TENANT_VERSION_TABLE)


@pytest.fixture
async def control(control_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A superuser connection (autocommit) to the test's control database, beside the code under test."""
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True) as conn:
        yield conn


#: The client address every ``remote`` request comes from.
REMOTE = "198.51.100.7"


@pytest.fixture
async def remote(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app (``create_app``, lifespan run in this event loop) reached from ``REMOTE`` with the
    automation token, like the ``client`` fixture but with a client address an ``inet`` column can hold
    (Litestar's test client calls itself ``testclient``)."""
    app = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()

    async def serve() -> None:  # the lifespan enters and exits in one task (anyio's task groups insist)
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(serve())
    await asyncio.wait({task, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # start-up failed: raise its error
    transport = httpx.ASGITransport(app=app, client=(REMOTE, 4711))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver.local", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as http:
            yield http
    finally:
        stop.set()
        await task


@pytest.fixture(scope="module")
async def card_api(
    pg_admin_dsn: str, control_template: str, tenant_template_name: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CardApi]:
    """The tenant API of ``cards_support`` over two tenants (acme, globex), provisioned once per module."""
    storage = tmp_path_factory.mktemp("storage")
    async with open_card_api(pg_admin_dsn, control_template, tenant_template_name, storage, ("acme", "globex")) as api:
        yield api


@pytest.fixture
async def api(card_api: CardApi) -> CardApi:
    await card_api.reset()
    return card_api
