"""Fixtures only the integration tests need (the PostgreSQL ones come from ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_harness import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: ``CARDVAULT_TEST_REDIS_URL``, else a private ``redis-server`` for the session."""
    with redis_server() as url:
        yield url
