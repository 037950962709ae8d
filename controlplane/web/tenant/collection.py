"""What the collection's pages (``cards``, ``catalog``) share: the ``CardVault`` of a page request, turning
a form into the API's input type, and the catalog's choices for the cards' selects.

Pages build the very ``CardVault`` the tenant API's ``vault`` dependency builds (same storage, quota
limits, image size limit, principal and audit context), so permissions, ownership, quotas, image checks
and audit rows are the API's own. A form is converted into the API's input type (``CardCreate``,
``PlayerUpdate``...) with the same ``msgspec`` constraints; only the messages are made for people.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import UploadFile

from controlplane.cards.errors import (
    ConstraintViolation,
    DuplicateRow,
    ImageTooLarge,
    InvalidReference,
    QuotaExceeded,
    RowInUse,
    UnsupportedImage,
)
from controlplane.cards.models import Card, ListQuery, Manufacturer, Player, Team
from controlplane.cards.service import MANUFACTURERS, PLAYERS, TEAMS, CardVault, Resource
from controlplane.context import TenantRequest
from controlplane.errors import CardVaultError
from controlplane.http.state import PLATFORM_STATE_KEY
from controlplane.paging import TENANT_PAGES
from controlplane.platform import Platform
from controlplane.storage.local import LocalStorage
from controlplane.usage.quotas import limits_for

S = TypeVar("S", bound=msgspec.Struct)

#: One-line notices a redirect may ask the next page to show (``?notice=added``).
NOTICES = {
    "added": "Added.",
    "saved": "Changes saved.",
    "deleted": "Deleted.",
}
#: What a write refuses because of what the form says: the form is shown again with the API's detail.
FORM_ERRORS = (
    InvalidReference,
    ConstraintViolation,
    DuplicateRow,
    RowInUse,
    QuotaExceeded,
    UnsupportedImage,
    ImageTooLarge,
)
_AT_FIELD = re.compile(r"`\$\.(\w+)`|field `(\w+)`")


class FormInvalid(Exception):
    """A form value the API's input type refuses; ``message`` says which and why, for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _platform(request: Request[Any, Any, Any]) -> Platform:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    return platform


def max_image_bytes(request: Request[Any, Any, Any]) -> int:
    return _platform(request).settings.http.max_image_bytes


def vault(request: Request[Any, Any, Any], ctx: TenantRequest) -> CardVault:
    """The ``CardVault`` of a page request, as ``cards.routes.request_vaults`` makes it for the API."""
    platform = _platform(request)
    settings = platform.settings
    return CardVault(
        ctx.conn,
        ctx.tenant.id,
        storage=LocalStorage(settings.data_dir / "storage"),
        quota_limits=limits_for(platform.control, ctx.tenant.id, ceiling=settings.billing.quota_ceiling),
        max_image_bytes=settings.http.max_image_bytes,
        principal=ctx.principal,
        audit=lambda: ctx.audit,
    )


def discard_after(box: CardVault, keys: Iterable[str]) -> BackgroundTask | None:
    """Remove stored objects once the response is out (and the request's transaction committed)."""
    keys = list(keys)
    return BackgroundTask(box.discard, keys) if keys else None


def notice(request: Request[Any, Any, Any]) -> str | None:
    return NOTICES.get(request.query_params.get("notice", ""))


def form_values(form: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """The text fields ``names`` of a posted form, stripped ('' when missing; uploads are not text)."""
    values = {}
    for name in names:
        value = form.get(name)
        values[name] = value.strip() if isinstance(value, str) else ""
    return values


def upload_of(form: Mapping[str, Any], name: str) -> UploadFile | None:
    """The file chosen in the form's file field ``name``; None when none was chosen."""
    value = form.get(name)
    return value if isinstance(value, UploadFile) and value.filename else None


def convert(values: Mapping[str, str], into: type[S], messages: Mapping[str, str]) -> S:
    """``values`` (blank = null) as the API's input type ``into``, or ``FormInvalid`` with the message of
    the first field it refuses (``messages``: field -> message)."""
    try:
        return msgspec.convert({k: (v or None) for k, v in values.items()}, type=into, strict=False)
    except msgspec.ValidationError as exc:
        found = _AT_FIELD.search(str(exc))
        field = (found.group(1) or found.group(2)) if found else ""
        raise FormInvalid(messages.get(field, f"Some of the values are not valid ({exc}).")) from None


def form_status(exc: CardVaultError) -> int:
    """The status of a form re-rendered for a refused write: the API's, except that its 422s (a value
    the database refused) are a form's plain 400."""
    return 400 if exc.status == 422 else exc.status


def player_label(player: Player) -> str:
    return f"{player.first_name} {player.last_name}" if player.first_name else player.last_name


def team_label(team: Team) -> str:
    return f"{team.name} ({team.league})" if team.league else team.name


def manufacturer_label(manufacturer: Manufacturer) -> str:
    return manufacturer.name


#: The card fields that name a catalog row: its resource, the order of the selects, how a row is shown.
REFERENCES: dict[str, tuple[Resource[Any], str, Callable[[Any], str]]] = {
    "player_id": (PLAYERS, "last_name", player_label),
    "team_id": (TEAMS, "name", team_label),
    "manufacturer_id": (MANUFACTURERS, "name", manufacturer_label),
}
#: Card field -> the (id, label) options of its select.
Choices = dict[str, list[tuple[int, str]]]


async def choices(box: CardVault, cards: Iterable[Card] = ()) -> Choices:
    """The options of the cards' selects: the first page (the API's largest) of players, teams and
    manufacturers, plus any row ``cards`` name beyond it (so every card shows its names)."""
    cards = list(cards)
    options: Choices = {}
    for field, (resource, sort, label) in REFERENCES.items():
        rows, _ = await box.page(resource, ListQuery(sort=sort, limit=TENANT_PAGES.maximum))
        found = {row.id: label(row) for row in rows}
        for ref in {getattr(card, field) for card in cards} - found.keys() - {None}:
            found[ref] = label(await box.get(resource, ref))
        options[field] = list(found.items())
    return options


def names(options: Choices) -> dict[str, dict[int, str]]:
    """Card field -> id -> label, for showing cards."""
    return {field: dict(pairs) for field, pairs in options.items()}
