"""Fixtures of the page tests: the whole app reached like a browser would (cookies, no bearer header)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from controlplane.app import create_app
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.conftest import REMOTE


@pytest.fixture
async def browser_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Litestar]]:
    """``(browser, api, app)``: two clients of one running app: ``browser`` keeps cookies and sends no
    ``Authorization`` header; ``api`` carries the automation token (to set things up)."""
    app = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()

    async def serve() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(serve())
    await asyncio.wait({task, asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    transport = httpx.ASGITransport(app=app, client=(REMOTE, 4711))
    base = "http://testserver.local"
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url=base) as browser,
            httpx.AsyncClient(
                transport=transport, base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as api,
        ):
            yield browser, api, app
    finally:
        stop.set()
        await task


@pytest.fixture
def browser(browser_app: tuple[httpx.AsyncClient, httpx.AsyncClient, Litestar]) -> httpx.AsyncClient:
    return browser_app[0]


@pytest.fixture
def api(browser_app: tuple[httpx.AsyncClient, httpx.AsyncClient, Litestar]) -> httpx.AsyncClient:
    return browser_app[1]


@pytest.fixture
def web_app(browser_app: tuple[httpx.AsyncClient, httpx.AsyncClient, Litestar]) -> Litestar:
    """The running app itself (its route table, its state)."""
    return browser_app[2]
