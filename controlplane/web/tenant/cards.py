"""The cards of the collection (``{base}/cards``): the list with search, filters, sort and keyset pages
(an htmx live search swaps just the results), a card with its image, adding and editing one with an
image upload, and deleting it.

Every page calls the same ``CardVault`` the tenant API's ``/cards`` routes call (``collection.vault``):
``cards:write_own`` to add cards and change one's own, ``cards:write_all`` for anyone's, the cards and
storage quotas, the image checks (type by magic bytes, size) and the audit rows are the API's. A card and
its image are written in one savepoint: a refused image leaves no card behind. Images are served
through ``{base}/cards/{id}/image`` (this origin, the page's session), as ``GET /cards/{id}/image``
serves them to the API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath

from controlplane.auth.models import Permission, Principal
from controlplane.cards.models import (
    Card,
    CardCreate,
    CardSort,
    CardUpdate,
    Condition,
    Id,
    ListQuery,
    SearchTerm,
    Year,
)
from controlplane.cards.service import CARDS, CardVault
from controlplane.context import TenantRequest
from controlplane.errors import PermissionDenied
from controlplane.http.state import BYTES_SERVED_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.paging import TENANT_PAGES
from controlplane.storage import delivery
from controlplane.usage.bytes_served import BytesServed
from controlplane.web.pages import is_htmx, page, see_other
from controlplane.web.sessions import tenant_base
from controlplane.web.tenant.collection import (
    FORM_ERRORS,
    FormInvalid,
    choices,
    convert,
    discard_after,
    form_status,
    form_values,
    max_image_bytes,
    names,
    notice,
    upload_of,
    vault,
)

Ctx = NamedDependency[TenantRequest]

CARD_FIELDS = ("cardnumber", "player_id", "team_id", "manufacturer_id", "year", "condition", "notes")
MESSAGES = {
    "cardnumber": "Card number is required (at most 64 characters).",
    "player_id": "Choose the player from the list.",
    "team_id": "Choose the team from the list.",
    "manufacturer_id": "Choose the manufacturer from the list.",
    "year": "Year must be a whole number from 1860 to 2100.",
    "year_min": "Year from must be a whole number from 1860 to 2100.",
    "year_max": "Year to must be a whole number from 1860 to 2100.",
    "condition": "Choose the condition from the list.",
    "notes": "Notes may be at most 10,000 characters.",
    "q": "Search for at most 200 characters.",
    "sort": "Choose the order from the list.",
}
SORTS = [
    ("-created_at", "Newest first"),
    ("created_at", "Oldest first"),
    ("-updated_at", "Recently changed"),
    ("-year", "Year, newest first"),
    ("year", "Year, oldest first"),
    ("cardnumber", "Card number, A to Z"),
    ("-cardnumber", "Card number, Z to A"),
]
CONDITIONS = [(c.value, c.value.replace("_", " ").capitalize()) for c in Condition]


class CardFilter(msgspec.Struct, kw_only=True):
    """The list's query string, with the API's limits (``GET /cards``'s parameters)."""

    q: SearchTerm | None = None
    player_id: Id | None = None
    team_id: Id | None = None
    manufacturer_id: Id | None = None
    year_min: Year | None = None
    year_max: Year | None = None
    condition: Condition | None = None
    sort: CardSort = "-created_at"
    cursor: str | None = None

    def query(self) -> ListQuery:
        return ListQuery(
            sort=self.sort,
            cursor=self.cursor,
            limit=TENANT_PAGES.default,
            q=self.q,
            equals={
                "player_id": self.player_id,
                "team_id": self.team_id,
                "manufacturer_id": self.manufacturer_id,
                "condition": self.condition,
            },
            at_least={"year": self.year_min},
            at_most={"year": self.year_max},
        )


FILTER_FIELDS = tuple(CardFilter.__struct_fields__)


def may_change(principal: Principal, card: Card) -> bool:
    """Whether the edit and delete buttons are shown: the service's own rule (``CardVault._check_owner``)."""
    if principal.can(Permission.CARDS_WRITE_ALL):
        return True
    owner = principal.user_id is not None and card.created_by == principal.user_id
    return owner and principal.can(Permission.CARDS_WRITE_OWN)


# -- the list ---------------------------------------------------------------------------------------


@get("/cards", name="tenant_ui_cards", opt=requires(Permission.CARDS_READ))
async def cards_list(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
    """The list; an htmx request (the live search) gets only the results."""
    base = tenant_base(request.scope)
    raw = {name: request.query_params.get(name, "").strip() for name in FILTER_FIELDS}
    kept = {k: v for k, v in raw.items() if v and k != "cursor"}  # the filters, for the pager's links
    box = vault(request, tenant_request)
    cards: list[Card] = []
    next_url = error = None
    try:
        chosen = convert({k: v for k, v in raw.items() if v}, CardFilter, MESSAGES)
        cards, next_cursor = await box.page(CARDS, chosen.query())
        if next_cursor is not None:
            next_url = f"{base}/cards?{urlencode({**kept, 'cursor': next_cursor})}"
    except FormInvalid as exc:
        error = exc.message
    options = await choices(box, cards)
    partial = is_htmx(request) and not request.headers.get("hx-history-restore-request")
    return page(
        request,
        "tenant/cards_results.html" if partial else "tenant/cards.html",
        principal=tenant_request.principal,
        title="Cards",
        cards=cards,
        names=names(options),
        choices=options,
        filters=raw,
        sorts=SORTS,
        conditions=CONDITIONS,
        next_url=next_url,
        first_url=f"{base}/cards?{urlencode(kept)}" if raw["cursor"] else None,
        can_add=tenant_request.principal.can(Permission.CARDS_WRITE_OWN),
        partial=partial,
        flash=notice(request),
        flash_error=error,
        # An htmx swap of a 4xx is dropped: the partial says what is wrong instead.
        status_code=400 if error and not partial else 200,
    )


# -- one card ---------------------------------------------------------------------------------------


@get("/cards/{card_id:int}", name="tenant_ui_card", opt=requires(Permission.CARDS_READ))
async def card_detail(request: Request[Any, Any, Any], tenant_request: Ctx, card_id: FromPath[int]) -> Response[Any]:
    box = vault(request, tenant_request)
    card = await box.get(CARDS, card_id)
    options = await choices(box, [card])
    return page(
        request,
        "tenant/cards_detail.html",
        principal=tenant_request.principal,
        title=f"Card {card.cardnumber}",
        card=card,
        names=names(options),
        conditions=dict(CONDITIONS),
        can_change=may_change(tenant_request.principal, card),
        flash=notice(request),
    )


@get("/cards/{card_id:int}/image", name="tenant_ui_card_image", opt=requires(Permission.CARDS_READ))
async def card_image(request: Request[Any, Any, Any], tenant_request: Ctx, card_id: FromPath[int]) -> Response[bytes]:
    """The card's image for ``<img>`` tags, as ``GET /cards/{id}/image`` answers the API (ETag, 304,
    counted as bytes served)."""
    info, data = await vault(request, tenant_request).get_image(card_id)
    headers = {
        "ETag": delivery.etag(info.sha256),
        "Cache-Control": delivery.PRIVATE_CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
    }
    if delivery.not_modified(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(b"", status_code=304, headers=headers)
    served: BytesServed | None = request.app.state.get(BYTES_SERVED_STATE_KEY)
    if served is not None:
        served.count(tenant_request.tenant.id, tenant_request.tenant.slug, len(data))
    return Response(data, media_type=info.content_type, headers=headers)


# -- adding and editing -----------------------------------------------------------------------------


async def _form(
    request: Request[Any, Any, Any],
    ctx: TenantRequest,
    box: CardVault,
    values: dict[str, str],
    *,
    card: Card | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response[Any]:
    options = await choices(box, [card] if card else [])
    return page(
        request,
        "tenant/cards_form.html",
        principal=ctx.principal,
        title=f"Edit card {card.cardnumber}" if card else "Add a card",
        card=card,
        values=values,
        choices=options,
        conditions=CONDITIONS,
        max_image_bytes=max_image_bytes(request),
        flash_error=error,
        status_code=status,
    )


async def _image(upload: UploadFile | None) -> tuple[str | None, bytes] | None:
    """The chosen file's declared type and bytes (checked by ``CardVault.put_image``), or None."""
    if upload is None:
        return None
    return upload.content_type, await upload.read()


def _card_values(card: Card) -> dict[str, str]:
    values = msgspec.structs.asdict(card)
    return {name: "" if values[name] is None else str(values[name]) for name in CARD_FIELDS}


@get("/cards/new", name="tenant_ui_card_new", opt=requires(Permission.CARDS_WRITE_OWN))
async def card_new(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
    return await _form(request, tenant_request, vault(request, tenant_request), dict.fromkeys(CARD_FIELDS, ""))


@post("/cards", name="tenant_ui_card_create", opt=requires(Permission.CARDS_WRITE_OWN))
async def card_create(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
    form = await request.form()
    values = form_values(form, CARD_FIELDS)
    box = vault(request, tenant_request)
    try:
        data = convert(values, CardCreate, MESSAGES)
        image = await _image(upload_of(form, "image"))
        async with tenant_request.conn.transaction():  # a refused image takes the new card with it
            card = await box.create(CARDS, data)
            if image is not None:
                await box.put_image(card.id, *image)
    except FormInvalid as exc:
        return await _form(request, tenant_request, box, values, error=exc.message, status=400)
    except FORM_ERRORS as exc:
        return await _form(request, tenant_request, box, values, error=exc.detail, status=form_status(exc))
    return see_other(request, f"{tenant_base(request.scope)}/cards/{card.id}?notice=added")


async def _changeable(box: CardVault, principal: Principal, card_id: int) -> Card:
    card = await box.get(CARDS, card_id)
    if not may_change(principal, card):
        raise PermissionDenied(
            f"card {card.id} was created by someone else; changing it needs {Permission.CARDS_WRITE_ALL}",
            permission=Permission.CARDS_WRITE_ALL.value,
        )
    return card


@get("/cards/{card_id:int}/edit", name="tenant_ui_card_edit", opt=requires(Permission.CARDS_WRITE_OWN))
async def card_edit(request: Request[Any, Any, Any], tenant_request: Ctx, card_id: FromPath[int]) -> Response[Any]:
    box = vault(request, tenant_request)
    card = await _changeable(box, tenant_request.principal, card_id)
    return await _form(request, tenant_request, box, _card_values(card), card=card)


@post("/cards/{card_id:int}", name="tenant_ui_card_update", opt=requires(Permission.CARDS_WRITE_OWN))
async def card_update(request: Request[Any, Any, Any], tenant_request: Ctx, card_id: FromPath[int]) -> Response[Any]:
    """Change the fields (blank clears one), and replace or remove the image, in one savepoint."""
    form = await request.form()
    values = form_values(form, CARD_FIELDS)
    box = vault(request, tenant_request)
    card = await _changeable(box, tenant_request.principal, card_id)
    obsolete: list[str] = []
    try:
        data = convert(values, CardUpdate, MESSAGES)
        image = await _image(upload_of(form, "image"))
        async with tenant_request.conn.transaction():
            await box.update(CARDS, card_id, data)
            if image is not None:
                obsolete += (await box.put_image(card_id, *image))[1]
            elif form.get("remove_image") == "yes" and card.image is not None:
                obsolete += await box.delete_image(card_id)
    except FormInvalid as exc:
        return await _form(request, tenant_request, box, values, card=card, error=exc.message, status=400)
    except FORM_ERRORS as exc:
        return await _form(request, tenant_request, box, values, card=card, error=exc.detail, status=form_status(exc))
    response = see_other(request, f"{tenant_base(request.scope)}/cards/{card_id}?notice=saved")
    response.background = discard_after(box, obsolete)
    return response


@post("/cards/{card_id:int}/delete", name="tenant_ui_card_delete", opt=requires(Permission.CARDS_WRITE_OWN))
async def card_delete(request: Request[Any, Any, Any], tenant_request: Ctx, card_id: FromPath[int]) -> Response[Any]:
    box = vault(request, tenant_request)
    obsolete = await box.delete_card(card_id)
    response = see_other(request, f"{tenant_base(request.scope)}/cards?notice=deleted")
    response.background = discard_after(box, obsolete)
    return response


HANDLERS: list[Any] = [
    cards_list,
    card_new,
    card_create,
    card_detail,
    card_image,
    card_edit,
    card_update,
    card_delete,
]
