"""Fixtures of the browser tests: one headless Chromium per test session (Playwright's async API, in the
session's event loop); per test module, one control database and one real service on it (``cardvault
serve`` on a free port, ``tests.conftest.serve``), because starting the service is most of a browser test's
cost; per test, a fresh watched browser context that fails the test on any console error, uncaught error or
CSP violation of the app's pages.

Tests of one module share the service, so each keeps to its own tenants (its own slugs); every browser
context starts with no cookies, so no test inherits another's sign-in. The module's super-admin
(``super_admin``) is made once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, async_playwright
from psycopg import sql

from controlplane import db
from controlplane.platform import Platform
from tests.browser.browser_support import LAUNCH_ARGS, Watched, chromium_path
from tests.conftest import ADMIN_TOKEN, Served, drop_everything_made_by, make_settings, serve
from tests.integration.auth_support import SUPER_ADMIN_EMAIL, make_admin


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's service directory (its data dir and log)."""
    return tmp_path_factory.mktemp("site")


@pytest.fixture(scope="module")
def control_dsn(pg_admin_dsn: str, control_template: str) -> Iterator[str]:
    """The module's control database (overrides the per-test one); its tenants are dropped afterwards."""
    name = f"cvtest_ctl_{uuid.uuid4().hex[:12]}"
    ident = sql.Identifier(name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(control_template)))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident))
    dsn = db.with_database(pg_admin_dsn, name)
    yield dsn
    drop_everything_made_by(dsn)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture(scope="module")
def site(control_dsn: str, tenant_template_name: str, site_dir: Path) -> Iterator[Served]:
    """The running service of the module."""
    with serve(control_dsn, tenant_template_name, site_dir) as running:
        yield running


@pytest.fixture(scope="module")
async def platform(control_dsn: str, tenant_template_name: str, site_dir: Path) -> AsyncIterator[Platform]:
    """The module's platform beside the service (setup and checks that go around the HTTP API)."""
    settings = dataclasses.replace(make_settings(control_dsn, tenant_template_name), data_dir=site_dir / "data")
    async with Platform.open(settings, migrate=False) as opened:
        yield opened


@pytest.fixture(scope="module")
async def super_admin(platform: Platform) -> str:
    """The module's super-admin (password ``USER_PASSWORD``): its email."""
    await make_admin(platform)
    return SUPER_ADMIN_EMAIL


@pytest.fixture
async def api(site: Served) -> AsyncIterator[httpx.AsyncClient]:
    """The running service with the automation admin token (setup and checks beside the browser)."""
    async with httpx.AsyncClient(
        base_url=site.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
async def watched(request: pytest.FixtureRequest, chromium: Browser, site: Served) -> AsyncIterator[Watched]:
    """A new browser context (1280x800, cookies of its own) on the running service; at the end of the
    test, every problem seen on the app's pages fails it. Indirect parameter: JavaScript on (default)."""
    context = await Watched.open(chromium, site.url, javascript=getattr(request, "param", True))
    try:
        yield context
    finally:
        await context.context.close()
    assert not context.problems, "the app's pages reported problems:\n" + "\n".join(context.problems)
