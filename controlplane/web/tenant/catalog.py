"""The catalog the cards refer to: players, teams and manufacturers (``{base}/players``, ``/teams``,
``/manufacturers``): each a searchable, filterable list with keyset pages (an htmx live search swaps just
the results), and adding, editing and deleting one.

The three are alike, so each is described once (``Kind``) and its handlers are made from that. They call
the same ``CardVault`` methods the tenant API's routes call: reading needs ``catalog:read``, changing
``catalog:write``; a duplicate name (409) or a row cards still refer to (409 on delete) shows the form
again with the API's message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from controlplane.auth.models import Permission
from controlplane.cards.models import (
    Id,
    ListQuery,
    ManufacturerCreate,
    ManufacturerUpdate,
    PlayerCreate,
    PlayerUpdate,
    SearchTerm,
    ShortText,
    Team,
    TeamCreate,
    TeamUpdate,
)
from controlplane.cards.service import MANUFACTURERS, PLAYERS, TEAMS, CardVault, Resource
from controlplane.context import TenantRequest
from controlplane.http.tenant_api import requires
from controlplane.paging import TENANT_PAGES
from controlplane.web.pages import is_htmx, page, see_other
from controlplane.web.sessions import tenant_base
from controlplane.web.tenant.collection import (
    FORM_ERRORS,
    FormInvalid,
    convert,
    form_status,
    form_values,
    manufacturer_label,
    notice,
    player_label,
    team_label,
    vault,
)

Ctx = NamedDependency[TenantRequest]
Options = list[tuple[int, str]]
NAME_MESSAGE = "Name is required (at most 200 characters)."
SHORT_MESSAGE = "may be at most 100 characters."


@dataclasses.dataclass(frozen=True)
class Field:
    """A form field: its input name (the API's field), label and size; ``team`` fields are a select."""

    name: str
    label: str
    required: bool = False
    maxlength: int = 100
    team: bool = False


class PlayerFilter(msgspec.Struct, kw_only=True):
    q: SearchTerm | None = None
    team_id: Id | None = None
    cursor: str | None = None


class TeamFilter(msgspec.Struct, kw_only=True):
    q: SearchTerm | None = None
    league: ShortText | None = None
    cursor: str | None = None


class ManufacturerFilter(msgspec.Struct, kw_only=True):
    q: SearchTerm | None = None
    cursor: str | None = None


@dataclasses.dataclass(frozen=True)
class Kind:
    """One part of the catalog: where it lives, its API types and how its list and form look."""

    path: str
    singular: str
    resource: Resource[Any]
    create: type[msgspec.Struct]
    update: type[msgspec.Struct]
    sort: str
    fields: tuple[Field, ...]
    messages: dict[str, str]
    #: The list's filter struct; a field besides ``q`` and ``cursor`` is an equality filter of the API.
    filter: type[msgspec.Struct]
    search_hint: str
    columns: tuple[str, ...]
    cells: Callable[[Any, dict[int, str]], list[str]]
    label: Callable[[Any], str]

    @property
    def filter_field(self) -> str | None:
        return next((f for f in self.filter.__struct_fields__ if f not in ("q", "cursor")), None)


def _player_cells(row: Any, teams: dict[int, str]) -> list[str]:
    return [player_label(row), teams.get(row.team_id, "") if row.team_id else "", row.position or ""]


KINDS = (
    Kind(
        path="players",
        singular="player",
        resource=PLAYERS,
        create=PlayerCreate,
        update=PlayerUpdate,
        sort="last_name",
        fields=(
            Field("last_name", "Last name", required=True, maxlength=200),
            Field("first_name", "First name", maxlength=200),
            Field("team_id", "Team", team=True),
            Field("position", "Position"),
        ),
        messages={
            "last_name": "Last name is required (at most 200 characters).",
            "first_name": "First name may be at most 200 characters and not blank.",
            "team_id": "Choose the team from the list.",
            "position": f"Position {SHORT_MESSAGE}",
            "q": "Search for at most 200 characters.",
        },
        filter=PlayerFilter,
        search_hint="First or last name",
        columns=("Name", "Team", "Position"),
        cells=_player_cells,
        label=player_label,
    ),
    Kind(
        path="teams",
        singular="team",
        resource=TEAMS,
        create=TeamCreate,
        update=TeamUpdate,
        sort="name",
        fields=(Field("name", "Name", required=True, maxlength=200), Field("city", "City"), Field("league", "League")),
        messages={
            "name": NAME_MESSAGE,
            "city": f"City {SHORT_MESSAGE}",
            "league": f"League {SHORT_MESSAGE}",
            "q": "Search for at most 200 characters.",
        },
        filter=TeamFilter,
        search_hint="Name or city",
        columns=("Name", "City", "League"),
        cells=lambda row, _: [row.name, row.city or "", row.league or ""],
        label=team_label,
    ),
    Kind(
        path="manufacturers",
        singular="manufacturer",
        resource=MANUFACTURERS,
        create=ManufacturerCreate,
        update=ManufacturerUpdate,
        sort="name",
        fields=(Field("name", "Name", required=True, maxlength=200),),
        messages={"name": NAME_MESSAGE, "q": "Search for at most 200 characters."},
        filter=ManufacturerFilter,
        search_hint="Name",
        columns=("Name",),
        cells=lambda row, _: [row.name],
        label=manufacturer_label,
    ),
)


async def _team_options(box: CardVault, kind: Kind, *also: int | None) -> Options:
    """The options of the team select when ``kind`` has one: the first page (the API's largest) of teams in
    name order, plus the teams ``also`` names beyond it."""
    if not any(f.team for f in kind.fields):
        return []
    teams: list[Team]
    teams, _ = await box.page(TEAMS, ListQuery(sort="name", limit=TENANT_PAGES.maximum))
    found = {team.id: team_label(team) for team in teams}
    for team_id in {t for t in also if t is not None and t not in found}:
        found[team_id] = team_label(await box.get(TEAMS, team_id))
    return list(found.items())


def _values(row: Any, names: tuple[str, ...]) -> dict[str, str]:
    """A row's fields as its form shows them."""
    return {name: "" if getattr(row, name) is None else str(getattr(row, name)) for name in names}


def _handlers(kind: Kind) -> list[Any]:
    """The list, add, edit and delete handlers of one part of the catalog."""
    names = tuple(f.name for f in kind.fields)
    filters = tuple(kind.filter.__struct_fields__)
    read, write = requires(Permission.CATALOG_READ), requires(Permission.CATALOG_WRITE)

    @get(f"/{kind.path}", name=f"tenant_ui_{kind.path}", opt=read)
    async def listing(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
        base = tenant_base(request.scope)
        raw = {name: request.query_params.get(name, "").strip() for name in filters}
        kept = {k: v for k, v in raw.items() if v and k != "cursor"}  # the filters, for the pager's links
        box = vault(request, tenant_request)
        rows: list[Any] = []
        next_url = error = None
        try:
            chosen: Any = convert({k: v for k, v in raw.items() if v}, kind.filter, kind.messages)
            field = kind.filter_field
            query = ListQuery(
                sort=kind.sort,
                cursor=chosen.cursor,
                q=chosen.q,
                equals={field: getattr(chosen, field)} if field else {},
            )
            rows, next_cursor = await box.page(kind.resource, query)
            if next_cursor is not None:
                next_url = f"{base}/{kind.path}?{urlencode({**kept, 'cursor': next_cursor})}"
        except FormInvalid as exc:
            error = exc.message
        teams = await _team_options(box, kind, *(getattr(r, "team_id", None) for r in rows))
        partial = is_htmx(request) and not request.headers.get("hx-history-restore-request")
        return page(
            request,
            "tenant/catalog_results.html" if partial else "tenant/catalog.html",
            principal=tenant_request.principal,
            title=kind.path.capitalize(),
            kind=kind,
            rows=[(row.id, kind.cells(row, dict(teams))) for row in rows],
            teams=teams,
            filters=raw,
            next_url=next_url,
            first_url=f"{base}/{kind.path}?{urlencode(kept)}" if raw["cursor"] else None,
            can_write=tenant_request.principal.can(Permission.CATALOG_WRITE),
            partial=partial,
            flash=notice(request),
            flash_error=error,
            status_code=400 if error and not partial else 200,
        )

    async def form(
        request: Request[Any, Any, Any],
        ctx: TenantRequest,
        box: CardVault,
        values: dict[str, str],
        *,
        row: Any = None,
        error: str | None = None,
        status: int = 200,
    ) -> Response[Any]:
        teams = await _team_options(box, kind, getattr(row, "team_id", None))
        return page(
            request,
            "tenant/catalog_form.html",
            principal=ctx.principal,
            title=f"Edit {kind.singular} {kind.label(row)}" if row else f"Add a {kind.singular}",
            kind=kind,
            row=row,
            values=values,
            teams=teams,
            flash_error=error,
            status_code=status,
        )

    @get(f"/{kind.path}/new", name=f"tenant_ui_{kind.path}_new", opt=write)
    async def new(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
        return await form(request, tenant_request, vault(request, tenant_request), dict.fromkeys(names, ""))

    @post(f"/{kind.path}", name=f"tenant_ui_{kind.path}_create", opt=write)
    async def create(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
        values = form_values(await request.form(), names)
        box = vault(request, tenant_request)
        try:
            await box.create(kind.resource, convert(values, kind.create, kind.messages))
        except FormInvalid as exc:
            return await form(request, tenant_request, box, values, error=exc.message, status=400)
        except FORM_ERRORS as exc:
            return await form(request, tenant_request, box, values, error=exc.detail, status=form_status(exc))
        return see_other(request, f"{tenant_base(request.scope)}/{kind.path}?notice=added")

    @get(f"/{kind.path}/{{row_id:int}}/edit", name=f"tenant_ui_{kind.path}_edit", opt=write)
    async def edit(request: Request[Any, Any, Any], tenant_request: Ctx, row_id: FromPath[int]) -> Response[Any]:
        box = vault(request, tenant_request)
        row = await box.get(kind.resource, row_id)
        return await form(request, tenant_request, box, _values(row, names), row=row)

    @post(f"/{kind.path}/{{row_id:int}}", name=f"tenant_ui_{kind.path}_update", opt=write)
    async def update(request: Request[Any, Any, Any], tenant_request: Ctx, row_id: FromPath[int]) -> Response[Any]:
        values = form_values(await request.form(), names)
        box = vault(request, tenant_request)
        row = await box.get(kind.resource, row_id)
        try:
            await box.update(kind.resource, row_id, convert(values, kind.update, kind.messages))
        except FormInvalid as exc:
            return await form(request, tenant_request, box, values, row=row, error=exc.message, status=400)
        except FORM_ERRORS as exc:
            return await form(request, tenant_request, box, values, row=row, error=exc.detail, status=form_status(exc))
        return see_other(request, f"{tenant_base(request.scope)}/{kind.path}?notice=saved")

    @post(f"/{kind.path}/{{row_id:int}}/delete", name=f"tenant_ui_{kind.path}_delete", opt=write)
    async def delete(request: Request[Any, Any, Any], tenant_request: Ctx, row_id: FromPath[int]) -> Response[Any]:
        box = vault(request, tenant_request)
        row = await box.get(kind.resource, row_id)
        try:
            await box.delete(kind.resource, row_id)
        except FORM_ERRORS as exc:  # still used by cards
            values = _values(row, names)
            return await form(request, tenant_request, box, values, row=row, error=exc.detail, status=form_status(exc))
        return see_other(request, f"{tenant_base(request.scope)}/{kind.path}?notice=deleted")

    return [listing, new, create, edit, update, delete]


HANDLERS: list[Any] = [handler for kind in KINDS for handler in _handlers(kind)]
