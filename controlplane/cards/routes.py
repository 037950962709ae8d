"""HTTP face of the CardVault tenant API: ``/cards``, ``/players``, ``/teams``, ``/manufacturers``.

Paths are relative to where the app mounts ``TENANT_API_HANDLERS`` (``/t/{slug}/api`` and ``/api``).
Handlers take one dependency, ``vault``: a ``CardVault`` on a connection to the tenant's own database,
committed after the handler returns and rolled back if it raises (handlers never commit). The service
provides it in one step (``vault_dependency``, on ``http.tenant_request.open_tenant_request``);
``card_dependencies`` composes it from ``tenant``, ``tenant_db``, ``quota_limits`` (looks one of the
tenant's limits up when called; None = unlimited), ``storage`` and ``max_image_bytes``, for tests that
mount these handlers without the tenant API's authentication.

Objects a request makes obsolete (replaced or deleted images) are removed by a background task, i.e.
after the response is complete and the transaction has committed. The image download also takes
``tenant`` (the app's ``http.tenant_api.tenant_dependencies``): the bytes it sends count as the tenant's
bytes served; it answers ``If-None-Match`` with 304 (``storage.delivery``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
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
from controlplane.db import AsyncConn
from controlplane.http.params import Cursor, Limit
from controlplane.http.state import BYTES_SERVED_STATE_KEY, PLATFORM_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.http.tenant_request import open_tenant_request
from controlplane.paging import MAX_ID, TENANT_PAGES
from controlplane.platform import Platform
from controlplane.registry.models import LimitLookup
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
Vault = NamedDependency[CardVault]


def provide_vault(
    tenant: NamedDependency[TenantContext],
    tenant_db: NamedDependency[AsyncConn],
    storage: NamedDependency[Storage],
    quota_limits: NamedDependency[LimitLookup],
    max_image_bytes: NamedDependency[int],
) -> CardVault:
    return CardVault(tenant_db, tenant.id, storage=storage, quota_limits=quota_limits, max_image_bytes=max_image_bytes)


def vault_dependency(settings: Settings) -> dict[str, Provide]:
    """``vault`` in one step, as the service provides it: the ``TenantRequest`` of the tenant API
    (connection, principal, permission checked) and a ``CardVault`` on it.

    One dependency rather than a chain: on the hot path every dependency Litestar resolves costs time.
    """
    storage = LocalStorage(settings.data_dir / "storage")
    max_image_bytes = settings.http.max_image_bytes
    ceiling = settings.billing.quota_ceiling  # cards and storage are soft for tenants paying for overage

    async def provide_request_vault(request: Request[Any, Any, Any]) -> AsyncIterator[CardVault]:
        async with open_tenant_request(request) as ctx:
            platform: Platform = request.app.state[PLATFORM_STATE_KEY]
            yield CardVault(
                ctx.conn,
                ctx.tenant.id,
                storage=storage,
                quota_limits=limits_for(platform.control, ctx.tenant.id, ceiling=ceiling),
                max_image_bytes=max_image_bytes,
                principal=ctx.principal,
                audit=lambda: ctx.audit,
            )

    return {"vault": Provide(provide_request_vault)}


def card_dependencies(settings: Settings, storage: Storage | None = None) -> dict[str, Provide]:
    """``vault`` composed from the five dependencies above (``storage``, a ``LocalStorage`` under
    ``<data_dir>/storage`` unless given, and ``max_image_bytes`` included), for tests that mount the
    handlers without the tenant API's authentication (the service uses ``vault_dependency``)."""
    store: Storage = storage if storage is not None else LocalStorage(settings.data_dir / "storage")
    limit = settings.http.max_image_bytes

    def provide_storage() -> Storage:
        return store

    def provide_max_image_bytes() -> int:
        return limit

    return {
        "storage": Provide(provide_storage, use_cache=True, sync_to_thread=False),
        "max_image_bytes": Provide(provide_max_image_bytes, use_cache=True, sync_to_thread=False),
        "vault": Provide(provide_vault, sync_to_thread=False),
    }


def _after_commit(vault: CardVault, keys: Iterable[str]) -> BackgroundTask | None:
    keys = list(keys)
    return BackgroundTask(vault.discard, keys) if keys else None


class ManufacturersController(Controller):
    path = "/manufacturers"
    tags = ["manufacturers"]

    @get("/", opt=requires(Permission.CATALOG_READ), summary="List manufacturers (search by name; keyset pages)")
    async def list_manufacturers(
        self,
        vault: Vault,
        sort: FromQuery[NamedSort] = "name",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
    ) -> ManufacturerPage:
        items, next_cursor = await vault.page(MANUFACTURERS, ListQuery(sort=sort, cursor=cursor, limit=limit, q=q))
        return ManufacturerPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CATALOG_WRITE), summary="Create a manufacturer (names are unique)")
    async def create_manufacturer(self, vault: Vault, data: JSONBody[ManufacturerCreate]) -> Manufacturer:
        return await vault.create(MANUFACTURERS, data)

    @get("/{manufacturer_id:int}", opt=requires(Permission.CATALOG_READ), summary="One manufacturer")
    async def get_manufacturer(self, vault: Vault, manufacturer_id: FromPath[int]) -> Manufacturer:
        return await vault.get(MANUFACTURERS, manufacturer_id)

    @patch("/{manufacturer_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Change a manufacturer")
    async def update_manufacturer(
        self, vault: Vault, manufacturer_id: FromPath[int], data: JSONBody[ManufacturerUpdate]
    ) -> Manufacturer:
        return await vault.update(MANUFACTURERS, manufacturer_id, data)

    @delete(
        "/{manufacturer_id:int}",
        opt=requires(Permission.CATALOG_WRITE),
        summary="Delete a manufacturer no card refers to",
    )
    async def delete_manufacturer(self, vault: Vault, manufacturer_id: FromPath[int]) -> None:
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
        vault: Vault,
        sort: FromQuery[NamedSort] = "name",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
        league: TextFilter = None,
    ) -> TeamPage:
        query = ListQuery(sort=sort, cursor=cursor, limit=limit, q=q, equals={"league": league})
        items, next_cursor = await vault.page(TEAMS, query)
        return TeamPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CATALOG_WRITE), summary="Create a team (name and league are unique together)")
    async def create_team(self, vault: Vault, data: JSONBody[TeamCreate]) -> Team:
        return await vault.create(TEAMS, data)

    @get("/{team_id:int}", opt=requires(Permission.CATALOG_READ), summary="One team")
    async def get_team(self, vault: Vault, team_id: FromPath[int]) -> Team:
        return await vault.get(TEAMS, team_id)

    @patch("/{team_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Change a team")
    async def update_team(self, vault: Vault, team_id: FromPath[int], data: JSONBody[TeamUpdate]) -> Team:
        return await vault.update(TEAMS, team_id, data)

    @delete(
        "/{team_id:int}",
        opt=requires(Permission.CATALOG_WRITE),
        summary="Delete a team no card refers to (its players lose their team)",
    )
    async def delete_team(self, vault: Vault, team_id: FromPath[int]) -> None:
        await vault.delete(TEAMS, team_id)


class PlayersController(Controller):
    path = "/players"
    tags = ["players"]

    @get(
        "/", opt=requires(Permission.CATALOG_READ), summary="List players (filter by team, search names; keyset pages)"
    )
    async def list_players(
        self,
        vault: Vault,
        sort: FromQuery[PlayerSort] = "last_name",
        cursor: Cursor = None,
        limit: Limit = TENANT_PAGES.default,
        q: Search = None,
        team_id: RefFilter = None,
    ) -> PlayerPage:
        query = ListQuery(sort=sort, cursor=cursor, limit=limit, q=q, equals={"team_id": team_id})
        items, next_cursor = await vault.page(PLAYERS, query)
        return PlayerPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CATALOG_WRITE), summary="Create a player")
    async def create_player(self, vault: Vault, data: JSONBody[PlayerCreate]) -> Player:
        return await vault.create(PLAYERS, data)

    @get("/{player_id:int}", opt=requires(Permission.CATALOG_READ), summary="One player")
    async def get_player(self, vault: Vault, player_id: FromPath[int]) -> Player:
        return await vault.get(PLAYERS, player_id)

    @patch("/{player_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Change a player")
    async def update_player(self, vault: Vault, player_id: FromPath[int], data: JSONBody[PlayerUpdate]) -> Player:
        return await vault.update(PLAYERS, player_id, data)

    @delete("/{player_id:int}", opt=requires(Permission.CATALOG_WRITE), summary="Delete a player no card refers to")
    async def delete_player(self, vault: Vault, player_id: FromPath[int]) -> None:
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
        vault: Vault,
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
        items, next_cursor = await vault.page(CARDS, query)
        return CardPage(items=items, next_cursor=next_cursor)

    @post("/", opt=requires(Permission.CARDS_WRITE_OWN), summary="Create a card (counts against the cards quota)")
    async def create_card(self, vault: Vault, data: JSONBody[CardCreate]) -> Card:
        return await vault.create(CARDS, data)

    @get("/{card_id:int}", opt=requires(Permission.CARDS_READ), summary="One card")
    async def get_card(self, vault: Vault, card_id: FromPath[int]) -> Card:
        return await vault.get(CARDS, card_id)

    @patch(
        "/{card_id:int}", opt=requires(Permission.CARDS_WRITE_OWN), summary="Change a card (send null to clear a field)"
    )
    async def update_card(self, vault: Vault, card_id: FromPath[int], data: JSONBody[CardUpdate]) -> Card:
        return await vault.update(CARDS, card_id, data)

    @delete("/{card_id:int}", opt=requires(Permission.CARDS_WRITE_OWN), summary="Delete a card and its stored image")
    async def delete_card(self, vault: Vault, card_id: FromPath[int]) -> Response[None]:
        obsolete = await vault.delete_card(card_id)
        return Response(None, status_code=204, background=_after_commit(vault, obsolete))

    @put(
        "/{card_id:int}/image",
        opt=requires(Permission.CARDS_WRITE_OWN),
        status_code=200,
        summary="Upload the card's image: raw JPEG, PNG or WebP body with its Content-Type",
    )
    async def put_image(
        self, vault: Vault, card_id: FromPath[int], body: RawBody, content_type: ContentType = None
    ) -> Response[ImageInfo]:
        # The body is read (up to the app's request_max_body_size) before any dependency runs, so a
        # slow upload never holds a tenant connection.
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
        request: Request[Any, Any, Any],
        vault: Vault,
        tenant: NamedDependency[TenantContext],
        card_id: FromPath[int],
        if_none_match: IfNoneMatch = None,
    ) -> Response[bytes]:
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
    async def delete_image(self, vault: Vault, card_id: FromPath[int]) -> Response[None]:
        obsolete = await vault.delete_image(card_id)
        return Response(None, status_code=204, background=_after_commit(vault, obsolete))


#: Everything the app mounts under ``/t/{tenant_slug:str}/api`` and ``/api``.
TENANT_API_HANDLERS: list[type[Controller]] = [
    CardsController,
    PlayersController,
    TeamsController,
    ManufacturersController,
]
