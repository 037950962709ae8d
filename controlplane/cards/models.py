"""CardVault API types: what a request may send (validated by msgspec) and what it gets back.

Inputs forbid unknown fields and carry their limits (years 1860-2100, the condition scale, string
lengths, ids that fit a ``bigint``), so a bad value is refused before any SQL runs. PATCH types default
every field to ``UNSET``: a field left out is left alone, a field sent as ``null`` is cleared.
Text never contains NUL (PostgreSQL ``text`` cannot hold it), and names are never blank.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from controlplane.paging import MAX_ID, TENANT_PAGES

#: ``re.search`` patterns (msgspec's semantics): no NUL anywhere; and no NUL plus one visible character.
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"^(?=[^\x00]*$)\s*\S"

Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID, description="id of an existing row")]
Year = Annotated[int, msgspec.Meta(ge=1860, le=2100)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK)]
ShortText = Annotated[str, msgspec.Meta(max_length=100, pattern=NO_NUL)]
CardNumber = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NOT_BLANK)]
Notes = Annotated[str, msgspec.Meta(max_length=10_000, pattern=NO_NUL)]
#: Free-text search term (``q``): matched case-insensitively as a substring.
SearchTerm = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class Condition(enum.StrEnum):
    """The grading scale of a card, best first."""

    MINT = "mint"
    NEAR_MINT = "near_mint"
    EXCELLENT = "excellent"
    VERY_GOOD = "very_good"
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"


class _Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# -- inputs --------------------------------------------------------------------------------------


class ManufacturerCreate(_Input):
    name: Name


class ManufacturerUpdate(_Input):
    name: Name | UnsetType = UNSET


class TeamCreate(_Input):
    name: Name
    city: ShortText | None = None
    league: ShortText | None = None


class TeamUpdate(_Input):
    name: Name | UnsetType = UNSET
    city: ShortText | UnsetType | None = UNSET
    league: ShortText | UnsetType | None = UNSET


class PlayerCreate(_Input):
    last_name: Name
    first_name: Name | None = None
    team_id: Id | None = None
    position: ShortText | None = None


class PlayerUpdate(_Input):
    last_name: Name | UnsetType = UNSET
    first_name: Name | UnsetType | None = UNSET
    team_id: Id | UnsetType | None = UNSET
    position: ShortText | UnsetType | None = UNSET


class CardCreate(_Input):
    cardnumber: CardNumber
    player_id: Id | None = None
    team_id: Id | None = None
    manufacturer_id: Id | None = None
    year: Year | None = None
    condition: Condition | None = None
    notes: Notes | None = None


class CardUpdate(_Input):
    cardnumber: CardNumber | UnsetType = UNSET
    player_id: Id | UnsetType | None = UNSET
    team_id: Id | UnsetType | None = UNSET
    manufacturer_id: Id | UnsetType | None = UNSET
    year: Year | UnsetType | None = UNSET
    condition: Condition | UnsetType | None = UNSET
    notes: Notes | UnsetType | None = UNSET


def changes(data: msgspec.Struct) -> dict[str, Any]:
    """The fields of an input that were sent (``UNSET`` ones dropped), as column -> value."""
    return {name: value for name, value in msgspec.structs.asdict(data).items() if value is not UNSET}


# -- outputs -------------------------------------------------------------------------------------


class Manufacturer(msgspec.Struct, kw_only=True):
    id: int
    name: str
    created_at: datetime
    updated_at: datetime


class Team(msgspec.Struct, kw_only=True):
    id: int
    name: str
    city: str | None
    league: str | None
    created_at: datetime
    updated_at: datetime


class Player(msgspec.Struct, kw_only=True):
    id: int
    first_name: str | None
    last_name: str
    team_id: int | None
    position: str | None
    created_at: datetime
    updated_at: datetime


class ImageInfo(msgspec.Struct, kw_only=True):
    """A stored card image (fetch it at ``/cards/{id}/image``)."""

    content_type: str
    bytes: int
    sha256: str


class Card(msgspec.Struct, kw_only=True):
    id: int
    cardnumber: str
    player_id: int | None
    team_id: int | None
    manufacturer_id: int | None
    year: int | None
    condition: Condition | None
    notes: str | None
    image: ImageInfo | None
    created_by: int | None
    created_at: datetime
    updated_at: datetime


class ManufacturerPage(msgspec.Struct):
    items: list[Manufacturer]
    #: Pass as ``cursor`` (with the same ``sort``) for the next page; null on the last page.
    next_cursor: str | None


class TeamPage(msgspec.Struct):
    items: list[Team]
    next_cursor: str | None


class PlayerPage(msgspec.Struct):
    items: list[Player]
    next_cursor: str | None


class CardPage(msgspec.Struct):
    items: list[Card]
    next_cursor: str | None


# -- listing -------------------------------------------------------------------------------------

#: Sort orders (``-`` = descending). Ties are broken by id, so pages never overlap or skip.
CardSort = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at", "year", "-year", "cardnumber", "-cardnumber",
    "id", "-id",
]  # fmt: skip
PlayerSort = Literal["last_name", "-last_name", "created_at", "-created_at", "updated_at", "-updated_at", "id", "-id"]
NamedSort = Literal["name", "-name", "created_at", "-created_at", "updated_at", "-updated_at", "id", "-id"]


class ListQuery(msgspec.Struct, kw_only=True):
    """One page request: order, position, search and filters (column -> value; None = no filter)."""

    sort: str
    cursor: str | None = None
    limit: int = TENANT_PAGES.default
    q: str | None = None
    equals: dict[str, Any] = msgspec.field(default_factory=dict)
    at_least: dict[str, Any] = msgspec.field(default_factory=dict)
    at_most: dict[str, Any] = msgspec.field(default_factory=dict)
