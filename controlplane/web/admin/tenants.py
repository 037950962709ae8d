"""The tenants list (``GET /admin/ui/tenants``) and the "New tenant" form (``POST /admin/ui/tenants``).

The list filters by a slug/name substring, status, tier and server, sorts by name, size or growth and
pages by keyset: the cursor in the query string is the last row's sort key and slug (base64 JSON naming
the order it was issued for), so page 200 costs what page 1 costs. One page is one statement
(``tenant_list_repository``) plus the server names for the filter. The filter form is a plain GET form;
with htmx it refreshes only the table's rows as one types (``hx-get``, ``hx-push-url``). Sorting by
growth uses the fleet's growth as this app read it at most ``GROWTH_TTL_SECONDS`` ago.

Creating a tenant goes through the same ``TenantService.create`` and the same ``tenant.create`` audit
row as ``POST /admin/tenants``. The first admin gets the password typed in the form, or, when it is left
empty, an invitation mail (``first_admin``). A user error re-renders the form with the values kept.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Template

from controlplane.audit.routes import audited
from controlplane.auth.passwords import normalize_email
from controlplane.auth.service import Authenticator
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, ValidationFailed
from controlplane.http.admin import admin_principal
from controlplane.http.state import AUTH_STATE_KEY, PLATFORM_STATE_KEY, TENANT_POOLS_STATE_KEY, TENANTS_STATE_KEY
from controlplane.paging import InvalidCursor
from controlplane.platform import Platform
from controlplane.provisioning.routes import CreateTenant, first_admin
from controlplane.provisioning.service import FirstAdmin, TenantService
from controlplane.registry.models import TenantStatus, Tier
from controlplane.web.admin import first_admin as invitations
from controlplane.web.admin import tenant_list_repository as repository
from controlplane.web.admin.tenant_list_repository import SORTS, Growth, Sort, TenantQuery
from controlplane.web.pages import is_htmx, page, see_other

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
LIST_PATH = "/admin/ui/tenants"
PAGE_SIZE = 50
_MAX_SEARCH = 100
_SORT_LABELS = {"name": "Name", "size": "Size (largest first)", "growth": "Growth (fastest first)"}
_SORT_BY: dict[str, Sort] = {option: option for option in SORTS}
_TEXT = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00]*$")]
#: What a cursor's sort key may be, per order (a value PostgreSQL takes without error).
_KEY_TYPES: dict[Sort, Any] = {
    "name": _TEXT,
    "size": Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)],
    "growth": Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)],
}
_FORM_FIELDS = ("slug", "name", "tier", "admin_email", "admin_password")
#: ``app.state`` key of the fleet's growth (when it was read, what it was), for sorting by growth.
_GROWTH_STATE_KEY = "web_admin_tenant_growth"
#: Seconds the fleet's growth is reused: it moves only with the usage history (a collection every few
#: minutes), and reading it costs two index probes per tenant.
GROWTH_TTL_SECONDS = 60.0


def _cursor(sort: Sort, key: Any, slug: str) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([f"tenants:{sort}", key, slug])).rstrip(b"=").decode()


def cursor_after(cursor: str, sort: Sort) -> tuple[Any, str]:
    """(sort key, slug) of a cursor this list issued for ``sort``; ``InvalidCursor`` for anything else."""
    try:
        raw = base64.b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        listing, key, slug = msgspec.json.decode(raw, type=tuple[str, Any, _TEXT])
        if listing != f"tenants:{sort}":
            raise ValueError("issued for another order")
        return msgspec.convert(key, _KEY_TYPES[sort], strict=False), slug
    except (ValueError, binascii.Error, msgspec.MsgspecError) as exc:
        raise InvalidCursor("the page link is not one this list made (or the order changed); start again") from exc


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if value not in allowed:
        raise ValidationFailed(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def parse_query(params: dict[str, str]) -> TenantQuery:
    """The list's query from the query string; ``ValidationFailed`` (400) for a value it cannot take."""
    search = params.get("q", "").strip()
    if len(search) > _MAX_SEARCH or "\x00" in search:
        raise ValidationFailed(f"search for at most {_MAX_SEARCH} characters")
    server = params.get("server", "").strip()
    if len(server) > 63 or "\x00" in server:
        raise ValidationFailed("unknown server")
    chosen = _choice(params.get("sort"), SORTS, "sort")
    sort = _SORT_BY[chosen] if chosen else "name"
    cursor = params.get("cursor", "")
    return TenantQuery(
        search=search or None,
        status=_choice(params.get("status"), tuple(s.value for s in TenantStatus), "status"),
        tier=_choice(params.get("tier"), tuple(t.value for t in Tier), "tier"),
        server=server or None,
        sort=sort,
        after=cursor_after(cursor, sort) if cursor else None,
        limit=PAGE_SIZE + 1,
    )


def _url(query: TenantQuery, cursor: str | None = None) -> str:
    params = {
        "q": query.search,
        "status": query.status,
        "tier": query.tier,
        "server": query.server,
        "sort": None if query.sort == "name" else query.sort,
        "cursor": cursor,
    }
    kept = {k: v for k, v in params.items() if v}
    return f"{LIST_PATH}?{urlencode(kept)}" if kept else LIST_PATH


async def _growth(request: Request[Any, Any, Any], conn: AsyncConn) -> Growth:
    """The fleet's growth, read at most once per ``GROWTH_TTL_SECONDS`` by this app."""
    kept: tuple[float, Growth] | None = request.app.state.get(_GROWTH_STATE_KEY)
    if kept is not None and time.monotonic() - kept[0] < GROWTH_TTL_SECONDS:
        return kept[1]
    growth = await repository.fleet_growth(conn)
    request.app.state[_GROWTH_STATE_KEY] = (time.monotonic(), growth)
    return growth


async def _list_context(request: Request[Any, Any, Any], query: TenantQuery) -> dict[str, Any]:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    async with platform.control.connection() as conn:
        if query.sort == "growth":
            query = dataclasses.replace(query, growth=await _growth(request, conn))
        rows = await repository.tenant_page(conn, query)
        servers = await repository.server_names(conn)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_url = _url(query, _cursor(query.sort, rows[-1].sort_key, rows[-1].slug)) if more else None
    return {
        "rows": rows,
        "query": query,
        "next_url": next_url,
        "first_url": _url(query) if query.after is not None else None,
        "statuses": [(s.value, s.value) for s in TenantStatus],
        "tiers": [(t.value, t.value) for t in Tier],
        "servers": [(name, name) for name in servers],
        "sorts": list(_SORT_LABELS.items()),
    }


@get("/tenants", name="admin_ui_tenants", summary="Tenants: search, filter, sort, keyset pages")
async def tenants_page(request: Request[Any, Any, Any]) -> Template:
    query = parse_query(dict(request.query_params))
    context = await _list_context(request, query)
    if is_htmx(request):  # the filter form's live refresh: the rows only
        return page(request, "admin/tenant_rows.html", title="Tenants", **context)
    form = dict.fromkeys(_FORM_FIELDS, "")
    form["tier"] = Tier.STARTER.value
    return page(
        request, "admin/tenants.html", principal=admin_principal(request), title="Tenants", form=form, **context
    )


def _create_input(data: dict[str, str]) -> CreateTenant:
    """The API's ``CreateTenant`` from the form (the password is only passed on when typed)."""
    email = data.get("admin_email", "").strip()
    password = data.get("admin_password", "")
    if password and not email:
        raise ValidationFailed("an admin password needs an admin email")
    try:
        return msgspec.convert(
            {
                "slug": data.get("slug", "").strip(),
                "name": data.get("name", "").strip(),
                "tier": data.get("tier", "").strip() or Tier.STARTER.value,
                "admin_email": email or None,
                "admin_password": password or None,
            },
            CreateTenant,
        )
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"that form is not valid: {exc}") from None


async def _admin_of(auth: Authenticator, data: CreateTenant) -> FirstAdmin | None:
    if data.admin_email is not None and data.admin_password is None:
        return FirstAdmin(email=normalize_email(data.admin_email), password_hash=invitations.NO_PASSWORD)
    return await first_admin(auth, data)


@post("/tenants", name="admin_ui_tenants_create", summary="Create and provision a tenant (the New tenant form)")
async def create_tenant(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
    values = {name: data.get(name, "") for name in _FORM_FIELDS}
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    tenants: TenantService = request.app.state[TENANTS_STATE_KEY]
    try:
        wanted = _create_input(data)
        details = {"name": wanted.name, "tier": wanted.tier, "admin_email": wanted.admin_email}
        async with audited(request, "tenant.create", slug=wanted.slug, existing=False, details=details) as audit:
            admin = await _admin_of(auth, wanted)
            tenant = audit.result(
                await tenants.create(name=wanted.name, slug=wanted.slug, tier=wanted.tier, admin=admin)
            )
            if admin is not None and admin.password_hash == invitations.NO_PASSWORD:
                audit.details["invited"] = await invitations.invite_first_admin(
                    request.app.state[PLATFORM_STATE_KEY],
                    request.app.state[TENANT_POOLS_STATE_KEY],
                    tenant,
                    admin.email,
                    ttl_seconds=auth.settings.invite_ttl,
                )
    except CardVaultError as exc:
        if exc.status >= 500:
            raise
        values["admin_password"] = ""  # never echoed back
        context = await _list_context(request, parse_query({}))
        return page(
            request,
            "admin/tenants.html",
            principal=admin_principal(request),
            title="Tenants",
            form=values,
            flash_error=exc.detail,
            status_code=exc.status,
            **context,
        )
    return see_other(request, f"{LIST_PATH}/{tenant.slug}")


HANDLERS: list[Any] = [tenants_page, create_tenant]
