"""Fixtures of the tenant cache tests: one instance's cache, and a second instance (platform and cache)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.platform import Platform
from controlplane.routing.cache import TenantCache
from controlplane.settings import Settings


@pytest.fixture
async def cache(platform: Platform) -> AsyncIterator[TenantCache]:
    started = TenantCache(platform)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def other_platform(settings: Settings) -> AsyncIterator[Platform]:
    """A second service instance: its own control pool and fleet."""
    async with Platform.open(settings, migrate=False) as opened:
        yield opened


@pytest.fixture
async def other_cache(other_platform: Platform) -> AsyncIterator[TenantCache]:
    started = TenantCache(other_platform)
    await started.start()
    yield started
    await started.stop()
