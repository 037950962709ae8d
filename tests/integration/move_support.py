"""Helpers of the tenant-move tests: a second server, what a tenant's database holds, what a move leaves."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane.backups.dump import count_rows
from tests.harness import LocalClusterHandle

Client = AsyncTestClient[Any]
StartCluster = Callable[[], LocalClusterHandle]

#: Seconds between two writes of the ``Writer`` (a steady load well under the tenant's hourly API limit).
PACE = 0.02
#: The first bytes of a PNG: all the image upload checks.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)


async def add_second_server(client: Client, extra_cluster: StartCluster) -> LocalClusterHandle:
    second = extra_cluster()
    response = await client.post("/admin/servers", json={"name": "second", "dsn": second.dsn})
    assert response.status_code == 201, response.text
    return second


def db_dsn(server_dsn: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=database)


async def rows(server_dsn: str, database: str) -> dict[str, int]:
    """Rows of every table of ``database`` (as the move's own verification counts them)."""
    async with await psycopg.AsyncConnection.connect(db_dsn(server_dsn, database), autocommit=True) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return await count_rows(conn)  # type: ignore[arg-type]


async def card_numbers(server_dsn: str, database: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(db_dsn(server_dsn, database), autocommit=True) as conn:
        cur = await conn.execute("SELECT cardnumber FROM cards")
        return {r[0] for r in await cur.fetchall()}


async def max_card_id(server_dsn: str, database: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_dsn(server_dsn, database), autocommit=True) as conn:
        cur = await conn.execute("SELECT max(id) FROM cards")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def databases_of(server_dsn: str, tenant_id: uuid.UUID) -> set[str]:
    """The tenant's databases on a server: its own, and any a move or a restore made (``t_<hex>_*``)."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
            (f"t_{tenant_id.hex}", f"t\\_{tenant_id.hex}\\_%"),
        ).fetchall()
    return {r[0] for r in found}


def placement(control_dsn: str) -> list[tuple[Any, ...]]:
    """Every tenant's slug, status, server and database, as the registry has them."""
    with psycopg.connect(control_dsn) as conn:
        return conn.execute("SELECT slug, status, server_id, database_name FROM tenants ORDER BY slug").fetchall()


def role_exists(server_dsn: str, role: str) -> bool:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def replication_leftovers(server_dsn: str) -> list[str]:
    """Slots, and subscriptions or publications in any database, on a server: a finished move leaves none."""
    found: list[str] = []
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        found += [f"slot {r[0]}" for r in conn.execute("SELECT slot_name FROM pg_replication_slots")]
        found += [f"subscription {r[0]}" for r in conn.execute("SELECT subname FROM pg_subscription")]
        databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")]
    for database in databases:
        with contextlib.suppress(psycopg.OperationalError), psycopg.connect(db_dsn(server_dsn, database)) as conn:
            found += [f"publication {r[0]} in {database}" for r in conn.execute("SELECT pubname FROM pg_publication")]
    return found


def execute(server_dsn: str, database: str, query: str | sql.Composed) -> None:
    with psycopg.connect(db_dsn(server_dsn, database), autocommit=True) as conn:
        conn.execute(query)


class Writer:
    """Keeps creating cards through the tenant API until stopped: what was acknowledged (201), and what
    was refused meanwhile (the write freeze: 503 only)."""

    def __init__(self, client: Client, slug: str, auth: dict[str, str]) -> None:
        self._client, self._slug, self._auth = client, slug, auth
        self.acknowledged: list[str] = []
        self.refused: list[int] = []
        self._stop = asyncio.Event()
        self._reached = asyncio.Event()
        self._enough: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            number = f"W-{n}"
            response = await self._client.post(
                f"/t/{self._slug}/api/cards", json={"cardnumber": number}, headers=self._auth
            )
            if response.status_code == 201:
                self.acknowledged.append(number)
                if self._enough is not None and len(self.acknowledged) >= self._enough:
                    self._reached.set()
            else:
                assert response.status_code == 503, response.text
                self.refused.append(response.status_code)
            await asyncio.sleep(PACE)

    async def stop_after(self, more: int) -> None:
        """Stop once ``more`` further writes were acknowledged."""
        self._enough = len(self.acknowledged) + more
        async with asyncio.timeout(30):
            await self._reached.wait()
        self._stop.set()
        assert self._task is not None
        await self._task
