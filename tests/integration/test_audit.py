"""The platform audit trail through the whole app (``platform_audit``).

Proven here: every platform action (tenant create / update / delete / suspend / resume, reconcile, server
add / drain / activate, impersonation) leaves exactly one ``platform_audit`` row with its actor, tenant,
outcome, source address and request id; a refused or failed action leaves a ``failed`` row with the
error code and answers exactly as it would without auditing (also when the audit cannot be written);
``GET /admin/audit`` filters and pages newest first, visiting every row exactly once, and refuses bad
filters and cursors with a 400. Tenant audit and impersonation: ``test_audit_tenant.py``.

Requests go through ``remote`` (``tests/integration/conftest.py``): the whole app (``create_app``) with the
automation token, reached through ``httpx.ASGITransport`` from a fixed client address, so rows carry one.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from controlplane.audit import repository as audit_repository
from controlplane.context import AuditContext, client_address
from controlplane.platform import Platform
from tests.harness import LocalClusterHandle
from tests.integration.audit_support import assert_error, new_rows, newest_first, platform_rows, walk
from tests.integration.conftest import REMOTE
from tests.integration.tenant_support import execute, fetch

Json = dict[str, Any]
Row = dict[str, Any]


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
