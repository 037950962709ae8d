"""Read replicas: tenant API reads served by a real streaming replica, read-your-writes, and fallbacks.

The primary is a throwaway cluster registered as server ``second`` (the default server is drained, so
the tenant lands there); the replica is a ``pg_basebackup -R`` copy of it, streaming. Which server
served a read is proven on the servers themselves: the replica's ``pg_stat_activity`` shows the tenant
role's pooled connection, and a paused replica (``pg_wal_replay_pause()``) does not have the newest
write, so a read that sees it came from the primary.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import conninfo

from controlplane.app import create_app
from controlplane.http.replica_routing import REPLICA_READS_OPT
from controlplane.settings import ReplicaSettings, Settings
from tests.harness import LocalClusterHandle, new_cluster
from tests.integration.admin_support import assert_error
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.replica_support import StreamingReplica, count_on, replay_paused, rows_of, tenant_backends
from tests.prometheus_support import assert_promtool_clean

Client = AsyncTestClient[Any]

#: Lag bound of these tests; the monitor checks every CHECK seconds.
MAX_LAG = 1.0
CHECK = 0.1


@dataclasses.dataclass
class Pair:
    primary: LocalClusterHandle
    replica: StreamingReplica
    replica_dsn: str


@pytest.fixture(scope="module")
def streaming() -> Iterator[Pair]:
    """A primary and its streaming replica, shared by this module's tests (each test re-registers them
    in its own control database); destroyed together at the end."""
    primary = new_cluster()
    try:
        replica = StreamingReplica(primary)
        yield Pair(primary, replica, replica.create())
    finally:
        primary.destroy()  # the replica lives in its directory


@pytest.fixture
def pair(streaming: Pair) -> Pair:
    """The pair as every test expects it: replica running and replaying (a test may stop or pause it)."""
    streaming.replica.ensure_running()
    replay_paused(streaming.replica_dsn, False)
    return streaming


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, replicas=ReplicaSettings(max_lag=MAX_LAG, check_interval=CHECK))


async def _tenant_on_replicated_server(
    client: Client, pair: Pair, slug: str, tier: str = "professional"
) -> TenantAdmin:
    response = await client.post("/admin/servers", json={"name": "second", "dsn": pair.primary.dsn})
    assert response.status_code == 201, response.text
    assert (await client.post("/admin/servers/default/drain")).status_code == 200
    response = await client.put("/admin/servers/second/replicas", json={"dsns": [pair.replica_dsn]})
    assert response.status_code == 200, response.text
    [view] = response.json()
    assert (view["position"], view["up"]) == (0, True), view
    assert "***" in view["dsn_display"] and pair.replica_dsn not in response.text  # the password never shows
    tenant = await create_tenant(client, slug, tier)

    async def usable() -> bool:
        [view] = (await client.get("/admin/servers/second/replicas")).json()
        return bool(view["usable"])

    await _until(usable)
    assert tenant.body["server_name"] == "second"
    return tenant


def _port(pair: Pair) -> str:
    return conninfo.conninfo_to_dict(pair.replica_dsn)["port"] or ""


def _role(tenant: TenantAdmin) -> str:
    return f"t_{tenant.id.hex}"


async def _names(client: Client, tenant: TenantAdmin, token: str | None = None) -> list[str]:
    headers = {**tenant.auth, **({"X-CardVault-Min-LSN": token} if token else {})}
    response = await client.get(tenant.api("/manufacturers"), headers=headers)
    assert response.status_code == 200, response.text
    return sorted(item["name"] for item in response.json()["items"])


async def _add(client: Client, tenant: TenantAdmin, name: str) -> str:
    response = await client.post(tenant.api("/manufacturers"), json={"name": name}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return response.headers["X-CardVault-LSN"]


async def _until(condition: Callable[[], Any]) -> None:
    """Wait (30 s at most: replay on a loaded CI machine) for ``condition()`` to come true."""
    for _ in range(int(30 / CHECK)):
        if await condition():
            return
        await asyncio.sleep(CHECK)
    raise AssertionError("condition not met within 30 s")


async def _replica_reads(client: Client) -> int:
    [view] = (await client.get("/admin/servers/second/replicas")).json()
    return int(view["reads"])


async def test_reads_come_from_the_replica_and_a_writer_reads_its_own_write(client: Client, pair: Pair) -> None:
    tenant = await _tenant_on_replicated_server(client, pair, "reader")
    assert tenant_backends(pair.replica_dsn, _role(tenant)) == 0

    lsn = await _add(client, tenant, "Topps")
    assert await _names(client, tenant, lsn) == ["Topps"]  # read-your-writes, wherever it was served
    # Once the monitor has seen the replica replay the write, reads with the token go to the replica:
    # its own pooled connection, as the tenant's own role, is there.
    before = await _replica_reads(client)

    async def served_by_replica() -> bool:
        return await _names(client, tenant, lsn) == ["Topps"] and await _replica_reads(client) > before

    await _until(served_by_replica)
    assert tenant_backends(pair.replica_dsn, _role(tenant)) >= 1

    # Replay paused: a read without a token may be served stale while the lag is within the bound; the
    # writer's token sends it to the primary, which has the write.
    replay_paused(pair.replica_dsn, True)
    await asyncio.sleep(3 * CHECK)
    lsn = await _add(client, tenant, "Fleer")
    assert await _names(client, tenant) == ["Topps"]  # the replica, still within MAX_LAG
    assert await _names(client, tenant, lsn) == ["Fleer", "Topps"]  # the primary
    # Past the bound the replica serves nothing: reads see the primary's data.
    await asyncio.sleep(MAX_LAG + 3 * CHECK)
    assert await _names(client, tenant) == ["Fleer", "Topps"]
    [view] = (await client.get("/admin/servers/second/replicas")).json()
    assert view["up"] is True and view["usable"] is False and view["lag_seconds"] > MAX_LAG
    assert view["lag_bytes"] > 0

    replay_paused(pair.replica_dsn, False)
    before = await _replica_reads(client)

    async def caught_up() -> bool:
        return await _names(client, tenant, lsn) == ["Fleer", "Topps"] and await _replica_reads(client) > before

    await _until(caught_up)
    response = await client.get("/metrics")
    assert_promtool_clean(response.content)
    metrics = response.text
    labels = f'{{replica="127.0.0.1:{_port(pair)}",server="second"}}'
    assert f"cardvault_replica_usable{labels} 1.0" in metrics and f"cardvault_replica_up{labels} 1.0" in metrics
    assert f"cardvault_replica_lag_seconds{labels} " in metrics and f"cardvault_replica_lag_bytes{labels} " in metrics


async def test_a_stopped_replica_costs_reads_nothing(client: Client, pair: Pair) -> None:
    tenant = await _tenant_on_replicated_server(client, pair, "steady")
    await _add(client, tenant, "Topps")
    before = await _replica_reads(client)

    async def from_replica() -> bool:
        return await _names(client, tenant) == ["Topps"] and await _replica_reads(client) > before

    await _until(from_replica)  # the replica's pool is open: the stop breaks connections in use
    pair.replica.stop(immediate=True)
    for _ in range(5):  # first on the dead pool (fallback at once), then routed to the primary
        assert await _names(client, tenant) == ["Topps"]
    await _add(client, tenant, "Fleer")
    assert await _names(client, tenant) == ["Fleer", "Topps"]
    [view] = (await client.get("/admin/servers/second/replicas")).json()
    assert (view["up"], view["usable"]) == (False, False) and view["error"]
    labels = f'{{replica="127.0.0.1:{_port(pair)}",server="second"}}'
    assert f"cardvault_replica_up{labels} 0.0" in (await client.get("/metrics")).text

    pair.replica.ensure_running()  # back: used again, with no restart of the service

    async def back() -> bool:
        return await _names(client, tenant) == ["Fleer", "Topps"] and await _replica_reads(client) > before

    await _until(back)


async def test_replica_lists_are_checked_and_tokens_validated(
    client: Client, pair: Pair, pg_admin_dsn: str, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    tenant = await _tenant_on_replicated_server(client, pair, "checked", "enterprise")
    # A primary is no replica; an unreachable DSN, an incomplete one, an unknown server: 4xx, nothing stored.
    for dsns, status, code in (
        ([pg_admin_dsn], 400, "validation_failed"),  # another server, and in no recovery
        ([pair.primary.dsn], 400, "validation_failed"),  # the server itself
        (["host=127.0.0.1 port=1 user=x dbname=postgres"], 400, "validation_failed"),
        (["host=127.0.0.1"], 400, "validation_failed"),
        ([pair.replica_dsn, pair.replica_dsn], 400, "validation_failed"),
    ):
        assert_error(await client.put("/admin/servers/second/replicas", json={"dsns": dsns}), status, code)
    assert_error(await client.put("/admin/servers/nope/replicas", json={"dsns": []}), 404, "server_not_found")
    assert len((await client.get("/admin/servers/second/replicas")).json()) == 1
    # A malformed read-your-writes token is the client's error.
    response = await client.get(tenant.api("/manufacturers"), headers={**tenant.auth, "X-CardVault-Min-LSN": "x"})
    assert_error(response, 400, "validation_failed")
    # An API key's first use writes its last_used_at, which a replica refuses: served by the primary.
    response = await client.post(tenant.api("/api-keys"), json={"name": "reader", "role": "user"}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    key = response.json()["key"]

    [(dbname,)] = await asyncio.to_thread(
        rows_of, control_dsn, "SELECT database_name FROM tenants WHERE slug = 'checked'"
    )

    async def key_replayed() -> bool:
        try:
            count = await asyncio.to_thread(count_on, pair.replica_dsn, str(dbname), "SELECT count(*) FROM api_keys")
        except psycopg.OperationalError:  # the tenant's database itself is not replayed there yet
            return False
        return count == 1

    await _until(key_replayed)
    response = await client.get(tenant.api("/manufacturers"), headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    touched = "SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL"
    assert count_on(pair.primary.dsn, str(dbname), touched) == 1
    # Another tenant's credentials read nothing through the replica either.
    other = await create_tenant(client, "other")
    response = await client.get(tenant.api("/manufacturers"), headers=other.auth)
    assert response.status_code in (401, 403), response.text

    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    assert run_cli(env, "servers", "update", "second", "--no-replicas").code == 0
    assert (await client.get("/admin/servers/second/replicas")).json() == []
    done = run_cli(env, "servers", "update", "second", "--replica", pair.replica_dsn, "--json")
    assert done.code == 0, done.stderr
    assert [r["position"] for r in done.json()] == [0]
    audit = (await client.get("/admin/audit", params={"action": "server.set_replicas"})).json()["items"]
    outcomes = sorted(row["outcome"] for row in audit)
    assert outcomes == ["failed"] * 6 + ["succeeded"] * 3  # the API's refusals and set, the CLI's two


def test_only_tenant_api_reads_may_use_replicas(settings: Settings) -> None:
    """Every tenant API GET may be served by a replica but the export download (it writes its audit row);
    nothing else of the app (web pages included) ever is."""
    app = create_app(settings)
    allowed: dict[str, bool] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if "GET" in getattr(handler, "http_methods", ()) and REPLICA_READS_OPT in handler.opt:
                allowed[route.path] = handler.opt[REPLICA_READS_OPT]
    api_gets = {path for path, ok in allowed.items() if ok}
    assert "/t/{tenant_slug:str}/api/cards" in api_gets and "/api/me" in api_gets
    assert all(path.startswith(("/t/{tenant_slug:str}/api/", "/api/")) for path in allowed)
    assert {path for path, ok in allowed.items() if not ok} == {
        "/t/{tenant_slug:str}/api/exports/{export_id:uuid}/download",
        "/api/exports/{export_id:uuid}/download",
    }
