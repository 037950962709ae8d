"""The CardVault tenant API over HTTP, continued: keyset pages that visit every row exactly once (equal sort
keys, NULL years, rows inserted between pages), invalid cursors, two tenants never seeing each other's rows,
requests running as the tenant's role, and the OpenAPI schema. ``card_api``/``api``: the integration conftest.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from tests.integration.cards_support import CardApi, assert_error

# -- keyset pages --------------------------------------------------------------------------------


async def walk(api: CardApi, sort: str, limit: int, between_pages: Any = None) -> list[int]:
    """Every id the API hands out following next_cursor from the first page to the last."""
    seen: list[int] = []
    params: dict[str, Any] = {"sort": sort, "limit": limit}
    for _ in range(1000):
        response = await api.request("GET", "acme", "/cards", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        seen.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            return seen
        params["cursor"] = page["next_cursor"]
        if between_pages is not None:
            await between_pages()
    raise AssertionError("pagination did not end")


async def seed_ties(api: CardApi) -> list[int]:
    """25 cards made in ONE transaction (equal created_at and updated_at), years from {NULL, 1990, 1991}."""
    rows = await api.sql(
        "acme",
        """
        INSERT INTO cards (cardnumber, year)
        SELECT 'tie', (ARRAY[NULL, 1990, 1991])[1 + g % 3] FROM generate_series(1, 25) AS g
        RETURNING id
        """,
    )
    return [r["id"] for r in rows]


@pytest.mark.parametrize(
    "sort", ["created_at", "-created_at", "updated_at", "year", "-year", "cardnumber", "-cardnumber", "-id"]
)
async def test_pages_visit_every_row_once_despite_equal_sort_keys(api: CardApi, sort: str) -> None:
    ids = await seed_ties(api)
    full = await api.request("GET", "acme", "/cards", params={"sort": sort, "limit": 200})
    in_one_page = [c["id"] for c in full.json()["items"]]
    for limit in (1, 4, 7):
        walked = await walk(api, sort, limit)
        assert walked == in_one_page, f"limit={limit}"
    assert sorted(in_one_page) == sorted(ids)


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "year", "-year", "id"])
async def test_pages_stay_consistent_while_rows_are_inserted(api: CardApi, sort: str) -> None:
    ids = await seed_ties(api)
    added: list[int] = []

    async def insert_one() -> None:
        card = await api.create("acme", "/cards", {"cardnumber": "new", "year": 1990 + len(added) % 3})
        added.append(card["id"])

    walked = await walk(api, sort, 4, between_pages=insert_one)
    assert len(walked) == len(set(walked)), "a row was handed out twice"
    assert set(ids) <= set(walked), "a row that existed throughout was skipped"
    assert set(walked) <= set(ids) | set(added)


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(value if isinstance(value, bytes) else value.encode()).decode().rstrip("=")


async def test_invalid_cursors_are_400(api: CardApi) -> None:
    await seed_ties(api)
    first = (await api.request("GET", "acme", "/cards", params={"sort": "year", "limit": 2})).json()
    good = first["next_cursor"]
    assert good
    bad = [
        ("year", "not a cursor!"),
        ("year", "%%%"),
        ("year", "é"),
        ("year", good[:-3]),
        ("year", cursor_of(b"\xff\xfe")),
        ("year", cursor_of("nonsense")),
        ("year", cursor_of('["year", 1990]')),
        ("year", cursor_of('["year", "MCMXC", 5]')),
        ("year", cursor_of('["year", 1990, -1]')),
        ("year", cursor_of('["year", 1990, 99999999999999999999]')),
        ("year", cursor_of('["year", 99999999999, 5]')),
        ("created_at", cursor_of('["created_at", "yesterday", 5]')),
        ("created_at", cursor_of('["created_at", null, 5]')),
        ("cardnumber", cursor_of('["cardnumber", "a\\u0000b", 5]')),
        # A cursor only continues the order it was issued for.
        ("-year", good),
        ("id", good),
    ]
    for sort, cursor in bad:
        response = await api.request("GET", "acme", "/cards", params={"sort": sort, "cursor": cursor})
        assert_error(response, 400, "invalid_cursor")
    response = await api.request("GET", "acme", "/cards", params={"sort": "year", "cursor": good, "limit": 2})
    assert response.status_code == 200


# -- tenants -------------------------------------------------------------------------------------


async def test_tenants_never_see_each_others_rows(api: CardApi) -> None:
    a = await api.create("acme", "/cards", {"cardnumber": "A-1", "notes": "acme's"})
    b = await api.create("globex", "/cards", {"cardnumber": "B-1", "notes": "globex's"})
    assert a["id"] == b["id"], "each tenant database numbers its own rows"
    await api.create("acme", "/manufacturers", {"name": "Topps"})
    await api.create("globex", "/manufacturers", {"name": "Topps"})  # no conflict across tenants

    for slug, mine in (("acme", a), ("globex", b)):
        got = await api.request("GET", slug, f"/cards/{a['id']}")
        assert got.json() == mine
        listed = (await api.request("GET", slug, "/cards")).json()["items"]
        assert listed == [mine]
    await api.request("PATCH", "globex", f"/cards/{b['id']}", json={"notes": "changed"})
    assert (await api.request("DELETE", "globex", f"/cards/{b['id']}")).status_code == 204
    assert (await api.request("GET", "acme", f"/cards/{a['id']}")).json() == a


async def test_requests_run_as_the_tenant_role_in_its_database(api: CardApi) -> None:
    rows = await api.sql("acme", "SELECT current_user AS who, current_database() AS db")
    tenant = api.tenants["acme"].record
    assert rows == [{"who": tenant.role_name, "db": tenant.database_name}]


async def test_concurrent_requests_each_get_their_own_transaction(api: CardApi) -> None:
    bodies = [{"cardnumber": f"c{i}"} for i in range(10)]
    responses = await asyncio.gather(*(api.request("POST", "acme", "/cards", json=b) for b in bodies))
    assert sorted(r.status_code for r in responses) == [201] * 10
    assert len((await api.request("GET", "acme", "/cards")).json()["items"]) == 10


async def test_openapi_schema_lists_the_tenant_api(api: CardApi) -> None:
    response = await api.client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    paths = response.json()["paths"]
    assert "/t/{tenant_slug}/api/cards/{card_id}/image" in paths
    assert {"get", "post"} <= set(paths["/t/{tenant_slug}/api/cards"])
