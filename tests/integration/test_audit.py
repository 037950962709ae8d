"""Audit trails through the whole app: ``platform_audit``, each tenant's ``audit_log``, and impersonation.

Proven here: every platform action (tenant create / update / delete / suspend / resume, reconcile, server
add / drain / activate, impersonation) leaves exactly one ``platform_audit`` row with its actor, tenant,
outcome, source address and request id; a refused or failed action leaves a ``failed`` row with the
error code and answers exactly as it would without auditing (also when the audit cannot be written);
``GET /admin/audit`` and the tenant's ``GET /api/audit`` filter and page newest first, visiting every
row exactly once, and refuse bad filters and cursors with a 400; only a tenant_admin of the tenant may
read its audit; only a super-admin's own login may impersonate, and the token it gets acts inside that
one tenant only, attributed to the admin.

Requests go through ``remote``: the whole app (``create_app``) with the automation token, reached through
``httpx.ASGITransport`` from a fixed client address, so that rows carry a source address.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from controlplane.app import create_app
from controlplane.audit import repository as audit_repository
from controlplane.context import AuditContext, client_address
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.harness import LocalClusterHandle
from tests.integration.auth_support import (
    SUPER_ADMIN_EMAIL,
    add_user,
    audit_rows,
    bearer,
    create_tenant,
    login_as,
    super_admin,
)
from tests.integration.tenant_support import execute, fetch

Json = dict[str, Any]
Row = dict[str, Any]

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


async def platform_rows(control_dsn: str) -> list[Row]:
    """Every ``platform_audit`` row, oldest first (read around the code under test)."""
    return await fetch(
        control_dsn,
        "SELECT id, at, actor, action, tenant_id, tenant_slug, entity, entity_id, outcome,"
        " host(source_address) AS source_address, request_id, details FROM platform_audit ORDER BY id",
    )


async def test_platform_rows_as_the_command_line_writes_them(control_dsn: str) -> None:
    """``record_platform`` on a connection of the caller's (the CLI's): defaults, every column, and a
    source address that is no IP address dropped by ``client_address``."""
    tenant_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True) as conn:
        await audit_repository.record_platform(conn, AuditContext(actor="cli:ops"), "signing_key.rotate")
        await audit_repository.record_platform(
            conn,
            AuditContext(actor="admin:1", source_address=client_address("not-an-ip"), request_id="req-1"),
            "tenant.suspend",
            tenant_id=tenant_id,
            tenant_slug="acme",
            entity="tenant",
            entity_id=tenant_id,
            outcome="failed",
            details={"reason": "test"},
        )
        ctx = AuditContext(actor="a", source_address=client_address("10.0.0.1"))
        await audit_repository.record_platform(conn, ctx, "b")
    found = await fetch(control_dsn, "SELECT *, host(source_address) AS address FROM platform_audit ORDER BY id")
    assert [(r["actor"], r["action"], r["outcome"]) for r in found] == [
        ("cli:ops", "signing_key.rotate", "succeeded"),
        ("admin:1", "tenant.suspend", "failed"),
        ("a", "b", "succeeded"),
    ]
    assert found[0]["details"] == {} and found[0]["entity"] is None and found[0]["at"] is not None
    assert found[1]["tenant_id"] == tenant_id and found[1]["tenant_slug"] == "acme"
    assert found[1]["entity_id"] == str(tenant_id) and found[1]["request_id"] == "req-1"
    assert found[1]["details"] == {"reason": "test"} and found[1]["address"] is None
    assert found[2]["address"] == "10.0.0.1"


async def new_rows(control_dsn: str, seen: int) -> list[Row]:
    return (await platform_rows(control_dsn))[seen:]


def assert_error(response: httpx.Response, status: int, code: str) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: Json = response.json()
    assert body["error"] == code, body
    return body


async def walk(http: httpx.AsyncClient, path: str, params: dict[str, Any], limit: int, **kwargs: Any) -> list[Json]:
    """Every item of a keyset-paged listing, following ``next_cursor`` (asserting no page is empty)."""
    items: list[Json] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=query, **kwargs)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit


def newest_first(rows: list[Json]) -> list[int]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["at"], r["id"]), reverse=True)]


def jwt_subject(auth: dict[str, str]) -> str:
    payload = auth["Authorization"].removeprefix("Bearer ").split(".")[1]
    claims: Json = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])


# -- platform audit: every action, once ----------------------------------------------------------------


async def test_every_platform_action_leaves_exactly_one_row(
    remote: httpx.AsyncClient, control_dsn: str, extra_cluster: Callable[[], LocalClusterHandle]
) -> None:
    second = extra_cluster()
    Check = Callable[[Row], None]
    created: Json = {}

    def tenant_row(row: Row) -> None:
        assert str(row["tenant_id"]) == created["id"] and row["entity"] == "tenant"
        assert row["entity_id"] == created["id"]

    def changed(field: str, old: str, new: str) -> Check:
        def check(row: Row) -> None:
            tenant_row(row)
            assert row["details"]["changes"][field] == [old, new], row["details"]

        return check

    def server(name: str) -> Check:
        def check(row: Row) -> None:
            assert row["entity"] == "server" and row["entity_id"] == name and row["tenant_id"] is None

        return check

    def server_added(row: Row) -> None:
        server("second")(row)
        assert "dsn" in row["details"]
        with psycopg.connect(second.dsn) as conn:
            password = conn.info.password
        assert password and password not in json.dumps(row["details"])

    def reconciled(row: Row) -> None:
        assert row["details"]["fix"] is True and isinstance(row["details"]["findings"], int)
        assert row["tenant_id"] is None

    steps: list[tuple[str, str, Json, int, str, str | None, Check]] = [
        ("POST", "/admin/tenants", {"name": "Acme", "slug": "acme"}, 201, "tenant.create", "acme", tenant_row),
        ("PATCH", "/admin/tenants/acme", {"name": "Acme Inc"}, 200, "tenant.update", "acme",
         changed("name", "Acme", "Acme Inc")),
        # A tier change is the quota change: old and new tier are in the row.
        ("PATCH", "/admin/tenants/acme", {"tier": "professional"}, 200, "tenant.update", "acme",
         changed("subscription_tier", "starter", "professional")),
        ("PATCH", "/admin/tenants/acme", {"slug": "acme-two"}, 200, "tenant.update", "acme",
         changed("slug", "acme", "acme-two")),
        ("POST", "/admin/tenants/acme-two/suspend", {}, 200, "tenant.suspend", "acme-two",
         changed("status", "active", "suspended")),
        ("POST", "/admin/tenants/acme-two/resume", {}, 200, "tenant.resume", "acme-two",
         changed("status", "suspended", "active")),
        ("POST", "/admin/reconcile?fix=true", {}, 200, "reconcile.run", None, reconciled),
        ("POST", "/admin/servers", {"name": "second", "dsn": second.dsn}, 201, "server.add", None, server_added),
        ("POST", "/admin/servers/second/drain", {}, 200, "server.drain", None, server("second")),
        ("POST", "/admin/servers/second/activate", {}, 200, "server.activate", None, server("second")),
        ("DELETE", "/admin/tenants/acme-two", {}, 200, "tenant.delete", "acme-two",
         changed("status", "active", "deleting")),
    ]  # fmt: skip
    seen = len(await platform_rows(control_dsn))
    for method, path, body, status, action, slug, check in steps:
        response = await remote.request(method, path, json=body or None)
        assert response.status_code == status, f"{method} {path}: {response.text}"
        if action == "tenant.create":
            created.update(response.json())
        rows = await new_rows(control_dsn, seen)
        assert len(rows) == 1, f"{method} {path} left {len(rows)} rows: {rows}"
        row = rows[0]
        assert (row["action"], row["outcome"], row["actor"]) == (action, "succeeded", "automation"), row
        assert row["tenant_slug"] == slug
        assert row["request_id"] == response.headers["x-request-id"]
        assert row["source_address"] == REMOTE
        assert row["details"]["actor_label"] == "CARDVAULT_ADMIN_TOKEN"
        check(row)
        seen += 1

    # Reads leave nothing behind.
    for path in ("/admin/tenants", "/admin/tenants/acme-two", "/admin/servers", "/admin/audit", "/admin/pools"):
        assert (await remote.get(path)).status_code == 200, path
    assert await new_rows(control_dsn, seen) == []


# -- platform audit: failures ----------------------------------------------------------------------------

#: Stands for the server's superuser DSN in ``FAILURES`` (the name check comes after the DSN check).
PG_ADMIN_DSN = "<pg_admin_dsn>"
#: (method, path, body, status, error code, action, tenant_slug, tenant known?) with ``acme`` active.
FAILURES: list[tuple[str, str, Json | None, int, str, str, str | None, bool]] = [
    ("POST", "/admin/tenants", {"name": "Again", "slug": "acme"}, 409, "slug_taken", "tenant.create", "acme", False),
    ("POST", "/admin/tenants", {"name": "X", "slug": "No_Caps"}, 400, "invalid_slug", "tenant.create", "No_Caps",
     False),
    ("POST", "/admin/tenants", {"name": "X", "slug": "xyz", "admin_email": "a@b.c"}, 400, "validation_failed",
     "tenant.create", "xyz", False),
    ("POST", "/admin/tenants/nobody/suspend", None, 404, "tenant_not_found", "tenant.suspend", "nobody", False),
    ("POST", "/admin/tenants/NOBODY/resume", None, 404, "tenant_not_found", "tenant.resume", "NOBODY", False),
    ("POST", "/admin/tenants/acme/resume", None, 409, "invalid_state", "tenant.resume", "acme", True),
    ("PATCH", "/admin/tenants/acme", {"tier": "platinum"}, 400, "invalid_tier", "tenant.update", "acme", True),
    ("DELETE", "/admin/tenants/nobody", None, 404, "tenant_not_found", "tenant.delete", "nobody", False),
    ("POST", "/admin/servers/nowhere/drain", None, 404, "server_not_found", "server.drain", None, False),
    ("POST", "/admin/servers", {"name": "default", "dsn": PG_ADMIN_DSN}, 409, "server_exists",
     "server.add", None, False),
    # The automation token may not impersonate (whatever the tenant).
    ("POST", "/admin/tenants/acme/impersonate", {"reason": "checking a ticket"}, 403, "permission_denied",
     "tenant.impersonate", "acme", True),
]  # fmt: skip


async def test_failed_actions_leave_a_failed_row_and_answer_unchanged(
    remote: httpx.AsyncClient, control_dsn: str, pg_admin_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    acme = (await remote.post("/admin/tenants", json={"name": "Acme", "slug": "acme"})).json()
    seen = len(await platform_rows(control_dsn))
    answers: list[tuple[int, Json]] = []

    def body_of(body: Json | None) -> Json | None:
        return {k: pg_admin_dsn if v == PG_ADMIN_DSN else v for k, v in body.items()} if body else body

    for method, path, body, status, code, action, slug, known in FAILURES:
        response = await remote.request(method, path, json=body_of(body))
        answers.append((response.status_code, assert_error(response, status, code)))
        rows = await new_rows(control_dsn, seen)
        assert len(rows) == 1, f"{method} {path}: {rows}"
        row = rows[0]
        assert (row["action"], row["outcome"], row["actor"]) == (action, "failed", "automation"), row
        assert row["details"]["error"] == code and row["details"]["status"] == status, row
        assert row["tenant_slug"] == slug
        assert (str(row["tenant_id"]) if known else row["tenant_id"]) == (acme["id"] if known else None)
        assert row["request_id"] == response.headers["x-request-id"] and row["source_address"] == REMOTE
        seen += 1

    # With the audit table gone, every answer is exactly the same (and successes still succeed).
    await execute(control_dsn, "ALTER TABLE platform_audit RENAME TO platform_audit_away")
    try:
        for (method, path, body, *_), answer in zip(FAILURES, answers, strict=True):
            response = await remote.request(method, path, json=body_of(body))
            assert (response.status_code, response.json()) == answer, f"{method} {path}"
        suspended = await remote.post("/admin/tenants/acme/suspend")
        assert suspended.status_code == 200
    finally:
        await execute(control_dsn, "ALTER TABLE platform_audit_away RENAME TO platform_audit")
    assert len(await platform_rows(control_dsn)) == seen
    # ... and the lost row is logged as an error, with its request id.
    lost = [r.getMessage() for r in caplog.records if r.name == "controlplane.audit.service" and r.levelname == "ERROR"]
    assert any("tenant.suspend (succeeded)" in m and suspended.headers["x-request-id"] in m for m in lost), lost


# -- GET /admin/audit ------------------------------------------------------------------------------------

ACTORS = ["automation", "admin:11111111-1111-1111-1111-111111111111", "cli:ops"]
ACTIONS = ["tenant.create", "tenant.suspend", "server.drain", "tenant_y.create", "tenantzy.create"]
SLUGS = ["acme", "beta", None]


async def seed_platform_audit(platform: Platform, batches: int = 12, per_batch: int = 4) -> None:
    """``batches`` transactions of ``per_batch`` rows: rows of one batch share their ``at`` (ties by id)."""
    n = 0
    async with platform.control.connection() as conn:
        for _ in range(batches):
            async with conn.transaction():
                for _ in range(per_batch):
                    ctx = AuditContext(actor=ACTORS[n % 3], source_address="192.0.2.1", request_id=f"seed-{n}")
                    await audit_repository.record_platform(
                        conn,
                        ctx,
                        ACTIONS[n % 5],
                        tenant_slug=SLUGS[n % 3 if n % 7 else 2],
                        outcome="failed" if n % 4 == 0 else "succeeded",
                        details={"n": n},
                    )
                    n += 1


def iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


async def test_admin_audit_filters_and_pages_visit_every_row_once(
    remote: httpx.AsyncClient, platform: Platform, control_dsn: str
) -> None:
    await seed_platform_audit(platform)
    rows = await platform_rows(control_dsn)
    assert len(rows) == 48
    ats = sorted({r["at"] for r in rows})
    since, until = ats[3], ats[9]

    def matching(predicate: Callable[[Row], bool]) -> list[int]:
        return newest_first([r for r in rows if predicate(r)])

    cases: list[tuple[dict[str, Any], Callable[[Row], bool]]] = [
        ({}, lambda r: True),
        ({"tenant": "acme"}, lambda r: r["tenant_slug"] == "acme"),
        ({"actor": "cli:ops"}, lambda r: r["actor"] == "cli:ops"),
        ({"action": "tenant.suspend"}, lambda r: r["action"] == "tenant.suspend"),
        ({"action": "tenant.*"}, lambda r: r["action"].startswith("tenant.")),
        # '_' is not a wildcard: tenant_* matches tenant_y.create only, not tenantzy.create.
        ({"action": "tenant_*"}, lambda r: r["action"].startswith("tenant_")),
        ({"action": "*"}, lambda r: True),
        ({"outcome": "failed"}, lambda r: r["outcome"] == "failed"),
        ({"since": since.isoformat()}, lambda r: r["at"] >= since),
        ({"until": until.isoformat()}, lambda r: r["at"] < until),
        (
            {"since": since.isoformat(), "until": until.isoformat(), "tenant": "beta", "outcome": "succeeded"},
            lambda r: since <= r["at"] < until and r["tenant_slug"] == "beta" and r["outcome"] == "succeeded",
        ),
        # An ISO time without an offset is UTC.
        (
            {"since": since.astimezone(UTC).replace(tzinfo=None).isoformat()},
            lambda r: r["at"] >= since,
        ),
        ({"tenant": "nobody"}, lambda r: False),
    ]
    for params, predicate in cases:
        expected = matching(predicate)
        for limit in (1, 5, 500):
            items = await walk(remote, "/admin/audit", params, limit)
            assert [i["id"] for i in items] == expected, (params, limit)
    # The items are the rows as stored.
    first = (await remote.get("/admin/audit", params={"limit": 1})).json()["items"][0]
    last = max(rows, key=lambda r: (r["at"], r["id"]))
    assert first["id"] == last["id"] and first["source_address"] == "192.0.2.1"
    assert first["request_id"] == last["request_id"] and first["details"] == last["details"]
    assert datetime.fromisoformat(first["at"]) == last["at"]


BAD_ADMIN_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"cursor": "not a cursor!"}, "invalid_cursor"),
    ({"cursor": base64.urlsafe_b64encode(b'["tenant_audit","2026-01-01T00:00:00Z",5]').decode()}, "invalid_cursor"),
    ({"cursor": base64.urlsafe_b64encode(b'["platform_audit","2026-01-01T00:00:00",5]').decode()}, "invalid_cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"[1,2]").decode()}, "invalid_cursor"),
    ({"cursor": "x" * 2000}, "validation_failed"),
    ({"limit": 0}, "validation_failed"),
    ({"limit": 501}, "validation_failed"),
    ({"limit": "many"}, "validation_failed"),
    ({"since": "yesterday"}, "validation_failed"),
    ({"until": "2026-13-45T00:00:00Z"}, "validation_failed"),
    ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "validation_failed"),
    ({"outcome": "maybe"}, "validation_failed"),
    ({"action": "tenant.*.create"}, "validation_failed"),
    ({"action": ""}, "validation_failed"),
    ({"tenant": "a\x00b"}, "validation_failed"),
    ({"actor": "x" * 201}, "validation_failed"),
]


async def test_admin_audit_refuses_bad_filters_with_400(remote: httpx.AsyncClient, platform: Platform) -> None:
    await seed_platform_audit(platform, batches=1)
    for params, code in BAD_ADMIN_QUERIES:
        assert_error(await remote.get("/admin/audit", params=params), 400, code)
    assert_error(await remote.get("/admin/audit", headers={"Authorization": "Bearer nope"}), 401, "invalid_token")


# -- tenant audit ----------------------------------------------------------------------------------------


async def test_tenant_writes_are_audited_with_actor_request_and_address(
    remote: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(remote, "acme")
    actor = jwt_subject(acme.auth)
    assert actor.startswith("user:")
    headers = {**acme.auth, "X-Request-ID": "req-player-1"}
    response = await remote.post(acme.api("/players"), json={"last_name": "Ruth"}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["x-request-id"] == "req-player-1"
    player_id = response.json()["id"]
    writes = [
        response,
        await remote.patch(acme.api(f"/players/{player_id}"), json={"position": "RF"}, headers=acme.auth),
        await remote.post(acme.api("/cards"), json={"cardnumber": "1", "player_id": player_id}, headers=acme.auth),
    ]
    card_id = writes[-1].json()["id"]
    writes.append(await remote.delete(acme.api(f"/cards/{card_id}"), headers=acme.auth))
    assert [w.status_code for w in writes] == [201, 200, 201, 204]

    rows = [r for r in await audit_rows(platform, "acme") if r["action"] != "auth.login"]
    assert [(r["action"], r["entity"], r["entity_id"]) for r in rows] == [
        ("player.create", "player", str(player_id)),
        ("player.update", "player", str(player_id)),
        ("card.create", "card", str(card_id)),
        ("card.delete", "card", str(card_id)),
    ]
    for row, write in zip(rows, writes, strict=True):
        assert row["actor"] == actor
        assert row["request_id"] == write.headers["x-request-id"]
        assert str(row["source_address"]) == REMOTE
        assert row["details"]["actor_label"] == acme.admin_email

    # The API shows the same rows, newest first, by path and by header.
    listed = (await remote.get(acme.api("/audit"), params={"entity": "player"}, headers=acme.auth)).json()
    assert [i["action"] for i in listed["items"]] == ["player.update", "player.create"]
    assert listed["items"][1]["request_id"] == "req-player-1" and listed["items"][1]["source_address"] == REMOTE
    by_header = await remote.get("/api/audit", params={"entity": "player"}, headers={**acme.auth, "X-Tenant": "acme"})
    assert by_header.status_code == 200 and by_header.json() == listed


async def test_tenant_audit_filters_and_pages_visit_every_row_once(
    remote: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(remote, "acme")
    await add_user(platform, "acme", "manager@acme.test", "collection_manager")
    manager = await login_as(remote, "acme", "manager@acme.test")
    players = []
    for i in range(9):
        who = acme.auth if i % 3 else manager
        response = await remote.post(acme.api("/players"), json={"last_name": f"P{i}"}, headers=who)
        assert response.status_code == 201, response.text
        players.append(response.json()["id"])
    for i in range(7):
        response = await remote.post(acme.api("/cards"), json={"cardnumber": f"C{i}"}, headers=manager)
        assert response.status_code == 201, response.text
    assert (await remote.patch(acme.api(f"/players/{players[0]}"), json={"position": "P"}, headers=manager)).is_success

    stored = await audit_rows(platform, "acme")
    rows = [{**r, "entity_id": r["entity_id"]} for r in stored]
    ats = sorted({r["at"] for r in rows})
    since, until = ats[4], ats[-3]
    manager_actor = jwt_subject(manager)

    cases: list[tuple[dict[str, Any], Callable[[Row], bool]]] = [
        ({}, lambda r: True),
        ({"actor": manager_actor}, lambda r: r["actor"] == manager_actor),
        ({"action": "player.create"}, lambda r: r["action"] == "player.create"),
        ({"action": "card.*"}, lambda r: r["action"].startswith("card.")),
        ({"action": "auth.*"}, lambda r: r["action"].startswith("auth.")),
        ({"entity": "player"}, lambda r: r["entity"] == "player"),
        ({"entity": "player", "entity_id": str(players[0])},
         lambda r: r["entity"] == "player" and r["entity_id"] == str(players[0])),
        ({"since": since.isoformat()}, lambda r: r["at"] >= since),
        ({"since": since.isoformat(), "until": until.isoformat(), "action": "player.*"},
         lambda r: since <= r["at"] < until and r["action"].startswith("player.")),
    ]  # fmt: skip
    for params, predicate in cases:
        expected = newest_first([r for r in rows if predicate(r)])
        for limit in (1, 4, 500):
            items = await walk(remote, acme.api("/audit"), params, limit, headers=acme.auth)
            assert [i["id"] for i in items] == expected, (params, limit)
    assert len(await walk(remote, "/api/audit", {}, 7, headers={**acme.auth, "X-Tenant": "acme"})) == len(rows)

    platform_cursor = base64.urlsafe_b64encode(b'["platform_audit","2026-01-01T00:00:00Z",5]').decode()
    for params, code in [
        ({"cursor": "garbage"}, "invalid_cursor"),
        ({"cursor": platform_cursor}, "invalid_cursor"),
        ({"limit": 0}, "validation_failed"),
        ({"since": "soon"}, "validation_failed"),
        ({"action": "*card"}, "validation_failed"),
        ({"entity_id": "\x00"}, "validation_failed"),
    ]:
        assert_error(await remote.get(acme.api("/audit"), params=params, headers=acme.auth), 400, code)


async def test_only_a_tenant_admin_of_the_tenant_reads_its_audit(remote: httpx.AsyncClient, platform: Platform) -> None:
    acme = await create_tenant(remote, "acme")
    beta = await create_tenant(remote, "beta")
    for role in ("user", "collection_manager"):
        await add_user(platform, "acme", f"{role}@acme.test", role)
        auth = await login_as(remote, "acme", f"{role}@acme.test")
        assert_error(await remote.get(acme.api("/audit"), headers=auth), 403, "permission_denied")
        assert_error(await remote.get("/api/audit", headers={**auth, "X-Tenant": "acme"}), 403, "permission_denied")
    assert (await remote.get(acme.api("/audit"), headers=acme.auth)).status_code == 200
    # acme's tenant_admin, addressed at beta by path and by header.
    assert_error(await remote.get(beta.api("/audit"), headers=acme.auth), 403, "wrong_tenant")
    assert_error(await remote.get("/api/audit", headers={**acme.auth, "X-Tenant": "beta"}), 403, "wrong_tenant")
    # Neither the automation token (not a tenant credential) nor no token at all.
    assert_error(await remote.get(acme.api("/audit")), 401, "invalid_token")
    assert_error(await remote.get(acme.api("/audit"), headers={"Authorization": ""}), 401, "unauthorized")


# -- impersonation ---------------------------------------------------------------------------------------


async def test_impersonation_by_a_super_admin(
    remote: httpx.AsyncClient, platform: Platform, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(remote, "acme")
    beta = await create_tenant(remote, "beta")
    actor, root = await super_admin(remote, platform, settings)
    seen = len(await platform_rows(control_dsn))

    response = await remote.post(
        "/admin/tenants/acme/impersonate", json={"reason": "ticket 42: cards missing"}, headers=root
    )
    assert response.status_code == 200, response.text
    pair = response.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] > 0 and pair.get("refresh_token") is None
    token = bearer(pair["access_token"])

    # Both trails have the start.
    [row] = await new_rows(control_dsn, seen)
    assert (row["action"], row["outcome"], row["actor"]) == ("tenant.impersonate", "succeeded", actor)
    assert (str(row["tenant_id"]), row["tenant_slug"]) == (str(acme.id), "acme")
    assert row["details"]["reason"] == "ticket 42: cards missing" and row["details"]["role"] == "tenant_admin"
    assert row["details"]["actor_label"] == SUPER_ADMIN_EMAIL and row["source_address"] == REMOTE
    assert row["request_id"] == response.headers["x-request-id"]
    [start] = await audit_rows(platform, "acme", "impersonation.start")
    assert start["actor"] == actor and start["details"]["reason"] == "ticket 42: cards missing"
    assert start["details"]["role"] == "tenant_admin" and start["details"]["impersonator"] == actor
    assert start["request_id"] == response.headers["x-request-id"] and str(start["source_address"]) == REMOTE

    # Inside acme the token is a tenant_admin, and what it does is attributed to the admin.
    assert (await remote.get(acme.api("/audit"), headers=token)).status_code == 200
    created = await remote.post(acme.api("/players"), json={"last_name": "Gehrig"}, headers=token)
    assert created.status_code == 201, created.text
    [write] = await audit_rows(platform, "acme", "player.create")
    assert write["actor"] == actor and write["details"]["impersonator"] == actor
    # Nowhere else.
    assert_error(await remote.get(beta.api("/players"), headers=token), 403, "wrong_tenant")
    assert_error(await remote.get("/api/players", headers={**token, "X-Tenant": "beta"}), 403, "wrong_tenant")
    assert_error(await remote.get("/admin/tenants", headers=token), 403, "wrong_tenant")
    assert_error(await remote.post("/admin/tenants/beta/impersonate", json={"reason": "more"}, headers=token), 403,
                 "wrong_tenant")  # fmt: skip

    # A lesser role, when asked for.
    response = await remote.post(
        "/admin/tenants/acme/impersonate", json={"reason": "see what users see", "role": "user"}, headers=root
    )
    assert response.status_code == 200, response.text
    as_user = bearer(response.json()["access_token"])
    assert (await remote.get(acme.api("/players"), headers=as_user)).status_code == 200
    assert_error(await remote.get(acme.api("/audit"), headers=as_user), 403, "permission_denied")


async def test_impersonation_refusals_are_audited(
    remote: httpx.AsyncClient, platform: Platform, settings: Settings, control_dsn: str
) -> None:
    await create_tenant(remote, "acme")
    await create_tenant(remote, "held")
    assert (await remote.post("/admin/tenants/held/suspend")).status_code == 200
    actor, root = await super_admin(remote, platform, settings)
    seen = len(await platform_rows(control_dsn))
    refused: list[tuple[str, Json, dict[str, str], int, str]] = [
        ("acme", {"reason": "automation tries"}, {}, 403, "permission_denied"),  # the client's automation token
        ("nobody", {"reason": "automation tries"}, {}, 403, "permission_denied"),
        ("nobody", {"reason": "no such tenant"}, root, 404, "tenant_not_found"),
        ("held", {"reason": "suspended tenant"}, root, 423, "tenant_suspended"),
        ("acme", {"reason": "   x   "}, root, 400, "validation_failed"),
    ]
    for slug, body, headers, status, code in refused:
        assert_error(await remote.post(f"/admin/tenants/{slug}/impersonate", json=body, headers=headers), status, code)
    rows = await new_rows(control_dsn, seen)
    assert [(r["action"], r["outcome"], r["tenant_slug"], r["details"]["error"]) for r in rows] == [
        ("tenant.impersonate", "failed", slug, code) for slug, _, _, _, code in refused
    ]
    assert [r["actor"] for r in rows] == ["automation", "automation", actor, actor, actor]
    # Bodies the API cannot take are refused before anything happens (no row).
    for body in ({}, {"reason": "ok"}, {"reason": "x" * 501}, {"reason": "valid", "role": "super_admin"},
                 {"reason": "valid", "extra": 1}):  # fmt: skip
        assert_error(await remote.post("/admin/tenants/acme/impersonate", json=body, headers=root), 400,
                     "validation_failed")  # fmt: skip
    assert len(await new_rows(control_dsn, seen)) == len(refused)
    assert await audit_rows(platform, "acme", "impersonation.start") == []
    # An expired-looking, foreign or missing credential never reaches the handler.
    assert_error(await remote.post("/admin/tenants/acme/impersonate", json={"reason": "no token"},
                                   headers={"Authorization": ""}), 401, "unauthorized")  # fmt: skip


async def test_platform_cursor_times_are_exact(remote: httpx.AsyncClient, platform: Platform) -> None:
    """Microsecond timestamps survive the cursor: rows a microsecond apart are neither lost nor repeated."""
    base = datetime(2026, 1, 1, 12, tzinfo=UTC)
    async with platform.control.connection() as conn:
        for i in range(6):
            await conn.execute(
                "INSERT INTO platform_audit (at, actor, action) VALUES (%s, 'automation', 'tick')",
                (base + timedelta(microseconds=i // 2),),
            )
    items = await walk(remote, "/admin/audit", {"action": "tick"}, 1)
    assert len(items) == 6 and len({i["id"] for i in items}) == 6
