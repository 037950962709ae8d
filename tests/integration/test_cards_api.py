"""The CardVault tenant API (``controlplane.cards``) over HTTP, against real provisioned tenants.

``CardApi`` (``cards_support``) mounts ``TENANT_API_HANDLERS`` under ``/t/{tenant_slug}/api`` with test
providers for the routing contract (the tenant's own role on its own database, the registry's quota
limits, a temporary storage directory); tenants are provisioned once per module (in a control database
of the module's own) and emptied before each test. The image and quota tests reuse it.

Proven here: CRUD of cards, players, teams and manufacturers; every list filter, the text search, every
sort order, invalid list parameters; 422 for references to missing rows, 409 for duplicates
and for deleting rows still in use; malformed bodies answered 400 with a JSON error, never 5xx;
``updated_at`` moving on every write. Keyset pages and tenant isolation: ``test_cards_pages.py``.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from tests.integration.cards_support import CardApi, Json, assert_error, ts

# -- CRUD ----------------------------------------------------------------------------------------

CRUD_CASES = [
    ("/manufacturers", {"name": "Topps"}, {"name": "Topps Chrome"}),
    ("/teams", {"name": "Giants", "city": "New York", "league": "NL"}, {"city": "San Francisco", "league": None}),
    ("/players", {"last_name": "Mays", "first_name": "Willie"}, {"position": "CF", "first_name": None}),
    ("/cards", {"cardnumber": "261", "year": 1952, "condition": "good"}, {"notes": "creased", "year": None}),
]


@pytest.mark.parametrize(("path", "create", "change"), CRUD_CASES, ids=[c[0][1:] for c in CRUD_CASES])
async def test_crud(api: CardApi, path: str, create: Json, change: Json) -> None:
    created = await api.create("acme", path, create)
    assert created.items() >= create.items()
    assert created["created_at"] == created["updated_at"]
    item = f"{path}/{created['id']}"

    fetched = await api.request("GET", "acme", item)
    assert fetched.status_code == 200 and fetched.json() == created

    patched = await api.request("PATCH", "acme", item, json=change)
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body.items() >= change.items()
    untouched = {k: v for k, v in create.items() if k not in change}
    assert body.items() >= untouched.items(), "fields left out of a PATCH must keep their value"
    assert ts(body["updated_at"]) > ts(created["updated_at"])

    listed = await api.request("GET", "acme", path)
    assert listed.status_code == 200 and [i["id"] for i in listed.json()["items"]] == [created["id"]]

    deleted = await api.request("DELETE", "acme", item)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(await api.request("GET", "acme", item), 404, "not_found")
    assert_error(await api.request("PATCH", "acme", item, json=change), 404, "not_found")
    assert_error(await api.request("DELETE", "acme", item), 404, "not_found")


async def test_card_with_all_references(api: CardApi) -> None:
    team = await api.create("acme", "/teams", {"name": "Yankees", "league": "AL"})
    player = await api.create("acme", "/players", {"last_name": "Mantle", "team_id": team["id"]})
    maker = await api.create("acme", "/manufacturers", {"name": "Bowman"})
    card = await api.create(
        "acme",
        "/cards",
        {
            "cardnumber": "311",
            "player_id": player["id"],
            "team_id": team["id"],
            "manufacturer_id": maker["id"],
            "year": 1952,
            "condition": "near_mint",
            "notes": "rookie",
        },
    )
    assert card["player_id"] == player["id"] and card["team_id"] == team["id"]
    assert card["manufacturer_id"] == maker["id"] and card["image"] is None and card["created_by"] is None

    # Referenced rows cannot go while the card holds them; a team's players merely lose their team.
    for path in (f"/players/{player['id']}", f"/teams/{team['id']}", f"/manufacturers/{maker['id']}"):
        body = assert_error(await api.request("DELETE", "acme", path), 409, "in_use")
        assert body["referenced_by"] == "cards"
    assert (await api.request("DELETE", "acme", f"/cards/{card['id']}")).status_code == 204
    assert (await api.request("DELETE", "acme", f"/teams/{team['id']}")).status_code == 204
    player_now = (await api.request("GET", "acme", f"/players/{player['id']}")).json()
    assert player_now["team_id"] is None


async def test_updated_at_moves_on_every_write(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    stamps = [ts(card["updated_at"])]
    for change in ({"notes": "a"}, {"notes": None}, {}, {"year": 2000}, {"condition": "mint"}):
        response = await api.request("PATCH", "acme", f"/cards/{card['id']}", json=change)
        assert response.status_code == 200, response.text
        stamps.append(ts(response.json()["updated_at"]))
        assert response.json()["created_at"] == card["created_at"]
    assert all(earlier < later for earlier, later in itertools.pairwise(stamps)), stamps


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/cards", {"cardnumber": "1", "player_id": 999}, "player_id"),
        ("/cards", {"cardnumber": "1", "team_id": 999}, "team_id"),
        ("/cards", {"cardnumber": "1", "manufacturer_id": 999}, "manufacturer_id"),
        ("/players", {"last_name": "Ruth", "team_id": 999}, "team_id"),
    ],
)
async def test_reference_to_a_missing_row_is_422(api: CardApi, path: str, body: Json, field: str) -> None:
    response = await api.request("POST", "acme", path, json=body)
    error = assert_error(response, 422, "invalid_reference")
    assert error["field"] == field and error["value"] == 999
    assert (await api.request("GET", "acme", path)).json()["items"] == []


async def test_patch_to_a_missing_reference_is_422_and_changes_nothing(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "7", "notes": "keep"})
    response = await api.request("PATCH", "acme", f"/cards/{card['id']}", json={"notes": "x", "player_id": 5})
    assert assert_error(response, 422, "invalid_reference")["field"] == "player_id"
    assert (await api.request("GET", "acme", f"/cards/{card['id']}")).json() == card


async def test_duplicates_are_409(api: CardApi) -> None:
    await api.create("acme", "/manufacturers", {"name": "Topps"})
    body = assert_error(await api.request("POST", "acme", "/manufacturers", json={"name": "Topps"}), 409, "conflict")
    assert body["constraint"] == "manufacturers_name_key"

    other = await api.create("acme", "/manufacturers", {"name": "Fleer"})
    response = await api.request("PATCH", "acme", f"/manufacturers/{other['id']}", json={"name": "Topps"})
    assert_error(response, 409, "conflict")

    # Teams are unique by (name, league), a missing league included.
    await api.create("acme", "/teams", {"name": "Giants"})
    assert_error(await api.request("POST", "acme", "/teams", json={"name": "Giants"}), 409, "conflict")
    await api.create("acme", "/teams", {"name": "Giants", "league": "NFL"})


BAD_BODIES: list[tuple[str, str, str | bytes]] = [
    ("POST", "/cards", b"{not json"),
    ("POST", "/cards", b""),
    ("POST", "/cards", b"[]"),
    ("POST", "/cards", b'"text"'),
    ("POST", "/cards", '{"cardnumber": "1", "colour": "red"}'),
    ("POST", "/cards", '{"cardnumber": 5}'),
    ("POST", "/cards", '{"cardnumber": "1", "year": "nineteen"}'),
    ("POST", "/cards", '{"cardnumber": "1", "year": true}'),
    ("POST", "/cards", '{"cardnumber": "1", "year": 1859}'),
    ("POST", "/cards", '{"cardnumber": "1", "year": 2101}'),
    ("POST", "/cards", '{"cardnumber": "1", "condition": "pristine"}'),
    ("POST", "/cards", '{"cardnumber": "1", "player_id": 0}'),
    ("POST", "/cards", '{"cardnumber": "1", "player_id": 9223372036854775808}'),
    ("POST", "/cards", '{"cardnumber": "1", "notes": "nul \\u0000 inside"}'),
    ("POST", "/cards", '{"cardnumber": "   "}'),
    ("POST", "/cards", '{"cardnumber": "' + "9" * 65 + '"}'),
    ("POST", "/cards", '{"cardnumber": "1", "image": "x.png"}'),
    ("POST", "/cards", '{"year": 1990}'),
    ("POST", "/manufacturers", '{"name": ""}'),
    ("POST", "/manufacturers", '{"name": null}'),
    ("POST", "/teams", '{"name": "A", "city": "' + "c" * 101 + '"}'),
    ("POST", "/players", '{"first_name": "Babe"}'),
    ("PATCH", "/cards/1", '{"year": 3000}'),
    ("PATCH", "/cards/1", '{"cardnumber": null}'),
    ("PATCH", "/cards/1", '{"id": 5}'),
    ("PATCH", "/manufacturers/1", '{"name": null}'),
    ("PATCH", "/players/1", '{"last_name": ""}'),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_BODIES)
async def test_bad_bodies_are_400_with_a_json_error(api: CardApi, method: str, path: str, body: str | bytes) -> None:
    await api.create("acme", "/cards", {"cardnumber": "1"})
    await api.create("acme", "/manufacturers", {"name": "M"})
    await api.create("acme", "/players", {"last_name": "P"})
    response = await api.request(method, "acme", path, content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "validation_failed")


@pytest.mark.parametrize(
    "path",
    ["/cards/0", "/cards/-1", "/cards/99999999999999999999", "/players/9223372036854775808", "/cards/5/image"],
)
async def test_ids_that_cannot_exist_are_404(api: CardApi, path: str) -> None:
    assert_error(await api.request("GET", "acme", path), 404, "not_found")
    if not path.endswith("/image"):
        assert_error(await api.request("PATCH", "acme", path, json={}), 404, "not_found")
        assert_error(await api.request("DELETE", "acme", path), 404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=x",
        "sort=colour",
        "sort=name",
        "year_min=1700",
        "year_max=abc",
        "condition=shiny",
        "player_id=0",
        "team_id=99999999999999999999",
        "q=",
        "q=%00",
    ],
)
async def test_bad_list_parameters_are_400(api: CardApi, query: str) -> None:
    assert_error(await api.request("GET", "acme", f"/cards?{query}"), 400, "validation_failed")


# -- lists ---------------------------------------------------------------------------------------


@pytest.fixture
async def catalogue(api: CardApi) -> dict[str, Json]:
    """Two teams, two players, two manufacturers and seven cards, named for what each test selects."""
    reds = await api.create("acme", "/teams", {"name": "Reds", "league": "NL"})
    sox = await api.create("acme", "/teams", {"name": "Red Sox", "league": "AL"})
    rose = await api.create("acme", "/players", {"last_name": "Rose", "first_name": "Pete", "team_id": reds["id"]})
    ted = await api.create("acme", "/players", {"last_name": "Williams", "first_name": "Ted", "team_id": sox["id"]})
    topps = await api.create("acme", "/manufacturers", {"name": "Topps"})
    fleer = await api.create("acme", "/manufacturers", {"name": "Fleer"})
    rows = {
        "rose63": {"cardnumber": "537", "year": 1963, "player_id": rose["id"], "team_id": reds["id"],
                   "manufacturer_id": topps["id"], "condition": "good", "notes": "Rookie Stars"},
        "rose75": {"cardnumber": "211", "year": 1975, "player_id": rose["id"], "team_id": reds["id"],
                   "manufacturer_id": topps["id"], "condition": "mint"},
        "ted54": {"cardnumber": "1", "year": 1954, "player_id": ted["id"], "team_id": sox["id"],
                  "manufacturer_id": topps["id"], "condition": "poor", "notes": "corner 100% gone"},
        "ted59": {"cardnumber": "80", "year": 1959, "player_id": ted["id"], "manufacturer_id": fleer["id"],
                  "condition": "excellent", "notes": "FLEER set_a"},
        "blank": {"cardnumber": "X-1"},
        "blank2": {"cardnumber": "x-2", "notes": "setXa"},
        "late": {"cardnumber": "2001", "year": 2001, "condition": "mint"},
    }  # fmt: skip
    out = {"reds": reds, "sox": sox, "rose": rose, "ted": ted, "topps": topps, "fleer": fleer}
    for name, body in rows.items():
        out[name] = await api.create("acme", "/cards", body)
    return out


async def card_names(api: CardApi, catalogue: dict[str, Json], query: str) -> list[str]:
    response = await api.request("GET", "acme", f"/cards?{query}")
    assert response.status_code == 200, response.text
    by_id = {row["id"]: name for name, row in catalogue.items() if "cardnumber" in row}
    return [by_id[item["id"]] for item in response.json()["items"]]


async def test_list_filters(api: CardApi, catalogue: dict[str, Json]) -> None:
    async def names(query: str) -> set[str]:
        return set(await card_names(api, catalogue, query))

    assert await names("year_min=1960") == {"rose63", "rose75", "late"}
    assert await names("year_max=1959") == {"ted54", "ted59"}
    assert await names("year_min=1955&year_max=1970") == {"ted59", "rose63"}
    assert await names(f"player_id={catalogue['rose']['id']}") == {"rose63", "rose75"}
    assert await names(f"team_id={catalogue['sox']['id']}") == {"ted54"}
    assert await names(f"manufacturer_id={catalogue['fleer']['id']}") == {"ted59"}
    assert await names("condition=mint") == {"rose75", "late"}
    assert await names(f"condition=mint&manufacturer_id={catalogue['topps']['id']}") == {"rose75"}
    assert await names("player_id=424242") == set()

    players = await api.request("GET", "acme", f"/players?team_id={catalogue['reds']['id']}")
    assert [p["last_name"] for p in players.json()["items"]] == ["Rose"]
    teams = await api.request("GET", "acme", "/teams?league=AL")
    assert [t["name"] for t in teams.json()["items"]] == ["Red Sox"]


async def test_text_search(api: CardApi, catalogue: dict[str, Json]) -> None:
    async def names(term: str) -> set[str]:
        return set(await card_names(api, catalogue, str(httpx.QueryParams({"q": term}))))

    assert await names("rookie") == {"rose63"}  # notes, case-insensitive
    assert await names("x-") == {"blank", "blank2"}  # cardnumber, case-insensitive
    assert await names("100%") == {"ted54"}  # % is literal
    assert await names("set_a") == {"ted59"}  # _ is literal (would also match "setXa" as a wildcard)
    assert await names("nothing like it") == set()
    assert await names("5") == {"rose63"}
    assert await names("fleer") == {"ted59"}
    # Search and filters combine.
    assert set(await card_names(api, catalogue, "q=r&year_max=1960")) == {"ted54", "ted59"}

    players = await api.request("GET", "acme", "/players", params={"q": "pete"})
    assert [p["last_name"] for p in players.json()["items"]] == ["Rose"]
    makers = await api.request("GET", "acme", "/manufacturers", params={"q": "TOP"})
    assert [m["name"] for m in makers.json()["items"]] == ["Topps"]


def expected_order(cards: list[Json], sort: str) -> list[int]:
    """Ids in ``sort`` order as the API defines it: ties by id, NULLs last ascending / first descending."""
    field, descending = sort.removeprefix("-"), sort.startswith("-")

    def key(card: Json) -> tuple[Any, int]:
        return (ts(card[field]) if field.endswith("_at") else card[field], card["id"])

    present = sorted((c for c in cards if c[field] is not None), key=key)
    missing = sorted((c for c in cards if c[field] is None), key=lambda c: c["id"])
    ordered = present + missing
    return [c["id"] for c in (reversed(ordered) if descending else ordered)]


@pytest.mark.parametrize(
    "sort", ["created_at", "-created_at", "updated_at", "-updated_at", "year", "-year", "cardnumber", "-cardnumber",
             "id", "-id"],
)  # fmt: skip
async def test_sort_orders(api: CardApi, catalogue: dict[str, Json], sort: str) -> None:
    cards = [row for row in catalogue.values() if "cardnumber" in row]
    if sort.removeprefix("-") == "cardnumber":
        # Text order is the database collation's; compare with what it says rather than Python's.
        rows = await api.sql("acme", "SELECT id FROM cards ORDER BY cardnumber, id")
        expected = [r["id"] for r in rows]
        expected = expected[::-1] if sort.startswith("-") else expected
    else:
        expected = expected_order(cards, sort)
    response = await api.request("GET", "acme", "/cards", params={"sort": sort})
    assert [c["id"] for c in response.json()["items"]] == expected


async def test_other_lists_sort(api: CardApi) -> None:
    for name in ("Upper Deck", "Bowman", "Topps"):
        await api.create("acme", "/manufacturers", {"name": name})
    for sort, names in (("name", ["Bowman", "Topps", "Upper Deck"]), ("-id", ["Topps", "Bowman", "Upper Deck"])):
        response = await api.request("GET", "acme", "/manufacturers", params={"sort": sort})
        assert [m["name"] for m in response.json()["items"]] == names
    for last in ("Young", "Aaron"):
        await api.create("acme", "/players", {"last_name": last})
    response = await api.request("GET", "acme", "/players", params={"sort": "-last_name"})
    assert [p["last_name"] for p in response.json()["items"]] == ["Young", "Aaron"]
