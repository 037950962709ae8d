"""TenantConnection parses each conninfo once: the same parameters as psycopg's own parse, a fresh copy for
every connect, a changed conninfo (a new password) parsed anew, and a bounded cache."""

from __future__ import annotations

import asyncio

import pytest
from psycopg import AsyncConnection

from controlplane.pools import connection
from controlplane.pools.connection import TenantConnection

DSN = "host=127.0.0.1 port=6432 user=t_a password=first dbname=t_a connect_timeout=3 application_name=cardvault-tenant"


def params(conninfo: str, **kwargs: str) -> dict[str, object]:
    return asyncio.run(TenantConnection._get_connection_params(conninfo, **kwargs))


def psycopg_params(conninfo: str, **kwargs: str) -> dict[str, object]:
    return asyncio.run(AsyncConnection._get_connection_params(conninfo, **kwargs))


def test_the_parameters_are_psycopgs_and_every_caller_gets_its_own_copy() -> None:
    TenantConnection._parsed.clear()
    first = params(DSN)
    assert first == psycopg_params(DSN)
    first["host"] = "10.0.0.1"  # psycopg's connect changes what it is given (host resolution)
    assert params(DSN) == psycopg_params(DSN)
    assert list(TenantConnection._parsed) == [DSN]


def test_a_changed_conninfo_is_parsed_anew_and_keyword_arguments_bypass_the_cache() -> None:
    TenantConnection._parsed.clear()
    params(DSN)
    rotated = DSN.replace("password=first", "password=second")
    assert params(rotated)["password"] == "second"
    assert params(DSN, dbname="other")["dbname"] == "other"
    assert set(TenantConnection._parsed) == {DSN, rotated}


def test_the_cache_starts_over_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    TenantConnection._parsed.clear()
    limit = 3
    monkeypatch.setattr(connection, "PARSED_MAX", limit)
    for i in range(limit):
        params(DSN.replace("dbname=t_a", f"dbname=t_{i}"))
    assert len(TenantConnection._parsed) == limit
    params(DSN)
    assert list(TenantConnection._parsed) == [DSN]
