"""Tenant audit trails and impersonation through the whole app.

Proven here: tenant writes are audited in the tenant's ``audit_log`` with actor, request id and source
address; the tenant's ``GET /api/audit`` filters and pages newest first, visiting every row exactly once;
only a tenant_admin of the tenant may read its audit; only a super-admin's own login may impersonate, the
token it gets acts inside that one tenant only, attributed to the admin, and refusals are audited.

Requests go through ``remote`` (``tests/integration/conftest.py``): the whole app reached from a fixed
client address, so that rows carry a source address.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx

from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.integration.audit_support import assert_error, jwt_subject, new_rows, newest_first, platform_rows, walk
from tests.integration.auth_support import (
    SUPER_ADMIN_EMAIL,
    add_user,
    audit_rows,
    bearer,
    create_tenant,
    login_as,
    super_admin,
)
from tests.integration.conftest import REMOTE

Json = dict[str, Any]
Row = dict[str, Any]

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
