"""HTTP face of the CardVault tenant API: ``/cards``, ``/players``, ``/teams``, ``/manufacturers``.

Paths are relative to where the app mounts ``TENANT_API_HANDLERS`` (``/t/{slug}/api`` and ``/api``).
Each handler opens its ``CardVault`` itself (``async with open_vault(request) as vault``): a connection to
the tenant's own database, committed when the block exits and rolled back if it raises (handlers never
commit). How it is opened is the app's choice, an ``app.state`` entry (``VAULTS_STATE_KEY``): the service
uses ``request_vaults``, on ``http.tenant_request.open_tenant_request`` (the principal loaded and the
route's permission checked); tests that mount these handlers without the tenant API's authentication
put their own there. Not a Litestar dependency: resolving one costs a hot read ~10 us of its ~300
(README "Routing").

Objects a request makes obsolete (replaced or deleted images) are removed by a background task, i.e.
after the response is complete and the transaction has committed. The image download also takes
``tenant`` (the app's ``http.tenant_api.tenant_dependencies``): the bytes it sends count as the tenant's
bytes served; it answers ``If-None-Match`` with 304 (``storage.delivery``).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Protocol

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter, RawBody

from controlplane.auth.models import Permission
from controlplane.cards.models import (
    NO_NUL,
    Card,
    CardCreate,
    CardPage,
    CardSort,
    CardUpdate,
    Condition,
    ImageInfo,
    ListQuery,
    Manufacturer,
    ManufacturerCreate,
    ManufacturerPage,
    ManufacturerUpdate,
    NamedSort,
    Player,
    PlayerCreate,
    PlayerPage,
    PlayerSort,
    PlayerUpdate,
    Team,
    TeamCreate,
    TeamPage,
    TeamUpdate,
)
from controlplane.cards.service import CARDS, MANUFACTURERS, PLAYERS, TEAMS, CardVault
from controlplane.context import TenantContext
from controlplane.http.params import Cursor, Limit
from controlplane.http.state import BYTES_SERVED_STATE_KEY, PLATFORM_STATE_KEY, VAULTS_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.http.tenant_request import open_tenant_request
from controlplane.paging import MAX_ID, TENANT_PAGES
from controlplane.platform import Platform
from controlplane.settings import Settings
from controlplane.storage import Storage, delivery
from controlplane.storage.local import LocalStorage
from controlplane.usage.bytes_served import BytesServed
from controlplane.usage.quotas import limits_for

Search = Annotated[
    str | None,
    QueryParameter(min_length=1, max_length=200, pattern=NO_NUL, description="case-insensitive substring"),
]
RefFilter = Annotated[int | None, QueryParameter(ge=1, le=MAX_ID)]
YearFilter = Annotated[int | None, QueryParameter(ge=1860, le=2100)]
TextFilter = Annotated[str | None, QueryParameter(max_length=100, pattern=NO_NUL)]
ContentType = Annotated[
    str | None, HeaderParameter(name="content-type", description="image/jpeg, image/png or image/webp")
]
IfNoneMatch = Annotated[str | None, HeaderParameter(name="if-none-match", max_length=8192)]
#: The request of a tenant API handler.
Req = Request[Any, Any, Any]


class Vaults(Protocol):
    """How the app opens a request's ``CardVault`` (``app.state[VAULTS_STATE_KEY]``)."""

    def __call__(self, request: Req) -> AbstractAsyncContextManager[CardVault]: ...


def open_vault(request: Req) -> AbstractAsyncContextManager[CardVault]:
    """The request's ``CardVault``, opened as the app says: ``async with open_vault(request) as vault``."""
    vaults: Vaults = request.app.state[VAULTS_STATE_KEY]
    return vaults(request)


def request_vaults(settings: Settings) -> Vaults:
    """The service's ``Vaults``: the tenant API request's ``TenantRequest`` (connection, principal,
    permission checked: ``open_tenant_request``) and a ``CardVault`` on it."""
    storage = LocalStorage(settings.data_dir / "storage")
    max_image_bytes = settings.http.max_image_bytes
    ceiling = settings.billing.quota_ceiling  # cards and storage are soft for tenants paying for overage

    def vaults(request: Req) -> _RequestVault:
        return _RequestVault(request, storage, max_image_bytes, ceiling)

    return vaults


class _RequestVault:
    """``request_vaults``' context manager: a class, as it runs in every card request."""

    __slots__ = ("_ceiling", "_max_image_bytes", "_request", "_scope", "_storage")

    def __init__(self, request: Req, storage: Storage, max_image_bytes: int, ceiling: float) -> None:
        self._request = request
        self._scope = open_tenant_request(request)
        self._storage = storage
        self._max_image_bytes = max_image_bytes
        self._ceiling = ceiling

    async def __aenter__(self) -> CardVault:
        ctx = await self._scope.__aenter__()
        platform: Platform = self._request.app.state[PLATFORM_STATE_KEY]
        return CardVault(
            ctx.conn,
            ctx.tenant.id,
            storage=self._storage,
            quota_limits=limits_for(platform.control, ctx.tenant.id, ceiling=self._ceiling),
            max_image_bytes=self._max_image_bytes,
            principal=ctx.principal,
            audit=lambda: ctx.audit,
        )

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        await self._scope.__aexit__(exc_type, exc, tb)


def _after_commit(vault: CardVault, keys: Iterable[str]) -> BackgroundTask | None:
    keys = list(keys)
    return BackgroundTask(vault.discard, keys) if keys else None


class ManufacturersController(Controller):
    path = "/manufacturers"
    tags = ["manufacturers"]

    @get("/", opt=requires(Permission.CATALOG_READ), summary="List manufacturers (search by name; keyset pages)")
    async def list_manufacturers(
        self,
        request: Req,
        sort: FromQuery[NamedSort] = "name",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
    ) -> ManufacturerPage:
        query = ListQuery(sort=sort, cursor=cursor, limit=limit, q=q)
        async with open_vault(request) as vault:
            items, next_cursor = await vault.page(MANUFACTURERS, query)
        return ManufacturerPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CATALOG_WRITE), summary="Create a manufacturer (names are unique)")
    async def create_manufacturer(self, request: Req, data: JSONBody[ManufacturerCreate]) -> Manufacturer:
        async with open_vault(request) as vault:
            return await vault.create(MANUFACTURERS, data)

    @get("/{manufacturer_id:int}", opt=requires(Permission.CATALOG_READ), summary="One manufacturer")
    async def get_manufacturer(self, request: Req, manufacturer_id: FromPath[int]) -> Manufacturer:
        async with open_vault(request) as vault:
            return await vault.get(MANUFACTURERS, manufacturer_id)

    @patch("/{manufacturer_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Change a manufacturer")
    async def update_manufacturer(
        self, request: Req, manufacturer_id: FromPath[int], data: JSONBody[ManufacturerUpdate]
    ) -> Manufacturer:
        async with open_vault(request) as vault:
            return await vault.update(MANUFACTURERS, manufacturer_id, data)

    @delete(
        "/{manufacturer_id:int}",
        opt=requires(Permission.CATALOG_WRITE),
        summary="Delete a manufacturer no card refers to",
    )
    async def delete_manufacturer(self, request: Req, manufacturer_id: FromPath[int]) -> None:
        async with open_vault(request) as vault:
            await vault.delete(MANUFACTURERS, manufacturer_id)


class TeamsController(Controller):
    path = "/teams"
    tags = ["teams"]

    @get(
        "/",
        opt=requires(Permission.CATALOG_READ),
        summary="List teams (filter by league, search name and city; keyset pages)",
    )
    async def list_teams(
        self,
        request: Req,
        sort: FromQuery[NamedSort] = "name",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
        league: TextFilter = None,
    ) -> TeamPage:
        query = ListQuery(sort=sort, cursor=cursor, limit=limit, q=q, equals={"league": league})
        async with open_vault(request) as vault:
            items, next_cursor = await vault.page(TEAMS, query)
        return TeamPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CATALOG_WRITE), summary="Create a team (name and league are unique together)")
    async def create_team(self, request: Req, data: JSONBody[TeamCreate]) -> Team:
        async with open_vault(request) as vault:
            return await vault.create(TEAMS, data)

    @get("/{team_id:int}", opt=requires(Permission.CATALOG_READ), summary="One team")
    async def get_team(self, request: Req, team_id: FromPath[int]) -> Team:
        async with open_vault(request) as vault:
            return await vault.get(TEAMS, team_id)

    @patch("/{team_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Change a team")
    async def update_team(self, request: Req, team_id: FromPath[int], data: JSONBody[TeamUpdate]) -> Team:
        async with open_vault(request) as vault:
            return await vault.update(TEAMS, team_id, data)

    @delete(
        "/{team_id:int}",
        opt=requires(Permission.CATALOG_WRITE),
        summary="Delete a team no card refers to (its players lose their team)",
    )
    async def delete_team(self, request: Req, team_id: FromPath[int]) -> None:
        async with open_vault(request) as vault:
            await vault.delete(TEAMS, team_id)


class PlayersController(Controller):
    path = "/players"
    tags = ["players"]

    @get(
        "/", opt=requires(Permission.CATALOG_READ), summary="List players (filter by team, search names; keyset pages)"
    )
    async def list_players(
        self,
        request: Req,
        sort: FromQuery[PlayerSort] = "last_name",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
        team_id: RefFilter = None,
    ) -> PlayerPage:
        query = ListQuery(sort=sort, cursor=cursor, limit=limit, q=q, equals={"team_id": team_id})
        async with open_vault(request) as vault:
            items, next_cursor = await vault.page(PLAYERS, query)
        return PlayerPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CATALOG_WRITE), summary="Create a player")
    async def create_player(self, request: Req, data: JSONBody[PlayerCreate]) -> Player:
        async with open_vault(request) as vault:
            return await vault.create(PLAYERS, data)

    @get("/{player_id:int}", opt=requires(Permission.CATALOG_READ), summary="One player")
    async def get_player(self, request: Req, player_id: FromPath[int]) -> Player:
        async with open_vault(request) as vault:
            return await vault.get(PLAYERS, player_id)

    @patch("/{player_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Change a player")
    async def update_player(self, request: Req, player_id: FromPath[int], data: JSONBody[PlayerUpdate]) -> Player:
        async with open_vault(request) as vault:
            return await vault.update(PLAYERS, player_id, data)

    @delete("/{player_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Delete a player no card refers to")
    async def delete_player(self, request: Req, player_id: FromPath[int]) -> None:
        async with open_vault(request) as vault:
            await vault.delete(PLAYERS, player_id)


class CardsController(Controller):
    path = "/cards"
    tags = ["cards"]

    @get(
        "/",
        opt=requires(Permission.CARDS_READ),
        summary="List cards (filters, search over cardnumber and notes, sort; keyset pages)",
    )
    async def list_cards(
        self,
        request: Req,
        sort: FromQuery[CardSort] = "created_at",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
        year_min: YearFilter = None,
        year_max: YearFilter = None,
        player_id: RefFilter = None,
        team_id: RefFilter = None,
        manufacturer_id: RefFilter = None,
        condition: FromQuery[Condition | None] = None,
    ) -> CardPage:
        query = ListQuery(
            sort=sort,
            cursor=cursor,
            limit=limit,
            q=q,
            equals={
                "player_id": player_id,
                "team_id": team_id,
                "manufacturer_id": manufacturer_id,
                "condition": condition,
            },
            at_least={"year": year_min},
            at_most={"year": year_max},
        )
        async with open_vault(request) as vault:
            items, next_cursor = await vault.page(CARDS, query)
        return CardPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CARDS_WRITE_OWN), summary="Create a card (counts against the cards quota)")
    async def create_card(self, request: Req, data: JSONBody[CardCreate]) -> Card:
        async with open_vault(request) as vault:
            return await vault.create(CARDS, data)

    @get("/{card_id:int}", opt=requires(Permission.CARDS_READ), summary="One card")
    async def get_card(self, request: Req, card_id: FromPath[int]) -> Card:
        async with open_vault(request) as vault:
            return await vault.get(CARDS, card_id)

    @patch(
        "/{card_id:int}", opt=requires(Permission.CARDS_WRITE_OWN), summary="Change a card (send null to clear a field)"
    )
    async def update_card(self, request: Req, card_id: FromPath[int], data: JSONBody[CardUpdate]) -> Card:
        async with open_vault(request) as vault:
            return await vault.update(CARDS, card_id, data)

    @delete("/{card_id:int}", opt=requires(Permission.CARDS_WRITE_OWN), summary="Delete a card and its stored image")
    async def delete_card(self, request: Req, card_id: FromPath[int]) -> Response[None]:
        async with open_vault(request) as vault:
            obsolete = await vault.delete_card(card_id)
        return Response(None, status_code=204, background=_after_commit(vault, obsolete))

    @put(
        "/{card_id:int}/image",
        opt=requires(Permission.CARDS_WRITE_OWN),
        status_code=200,
        summary="Upload the card's image: raw JPEG, PNG or WebP body with its Content-Type",
    )
    async def put_image(
        self, request: Req, card_id: FromPath[int], body: RawBody, content_type: ContentType = None
    ) -> Response[ImageInfo]:
        # The body is read (up to the app's request_max_body_size) before the handler runs, so a slow
        # upload never holds a tenant connection.
        async with open_vault(request) as vault:
            info, obsolete = await vault.put_image(card_id, content_type, body)
        return Response(info, background=_after_commit(vault, obsolete))

    @get(
        "/{card_id:int}/image",
        opt=requires(Permission.CARDS_READ),
        summary="The card's image, as uploaded (If-None-Match: 304; for CDNs see /cards/{id}/image/link)",
        media_type="application/octet-stream",
        response_headers=[ResponseHeader(name="ETag", documentation_only=True, description="sha256 of the image")],
    )
    async def get_image(
        self,
        request: Req,
        tenant: NamedDependency[TenantContext],
        card_id: FromPath[int],
        if_none_match: IfNoneMatch = None,
    ) -> Response[bytes]:
        async with open_vault(request) as vault:
            info, data = await vault.get_image(card_id)
        headers = {
            "ETag": delivery.etag(info.sha256),
            "Cache-Control": delivery.PRIVATE_CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
        }
        if delivery.not_modified(if_none_match, headers["ETag"]):
            return Response(b"", status_code=304, headers=headers)  # nothing sent: not bytes served
        served: BytesServed | None = request.app.state.get(BYTES_SERVED_STATE_KEY)
        if served is not None:
            served.count(tenant.id, tenant.slug, len(data))
        return Response(data, media_type=info.content_type, headers=headers)

    @delete("/{card_id:int}/image", opt=requires(Permission.CARDS_WRITE_OWN), summary="Remove the card's image")
    async def delete_image(self, request: Req, card_id: FromPath[int]) -> Response[None]:
        async with open_vault(request) as vault:
            obsolete = await vault.delete_image(card_id)
        return Response(None, status_code=204, background=_after_commit(vault, obsolete))


#: Everything the app mounts under ``/t/{tenant_slug:str}/api`` and ``/api``.
TENANT_API_HANDLERS: list[type[Controller]] = [
    CardsController,
    PlayersController,
    TeamsController,
    ManufacturersController,
]
