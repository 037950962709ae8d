"""Keyset pages: the cursor every listing hands out, its one error, and the page sizes.

A listing returns rows in a fixed order (a sort key, ties broken by id) and, when there are more, a
``next_cursor``: the position after its last row. The cursor is opaque to clients: URL-safe base64 of
the JSON ``[listing, sort value, id]``. ``listing`` names the listing and order it was issued for
(``created_at``, ``-year``, ``tenant_audit`` ...), so a cursor of one listing is refused by every other
(400 ``invalid_cursor``), as is anything that is not a cursor this service made.

The query parameters that carry ``cursor`` and ``limit`` are ``controlplane.http.params``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any

import msgspec

from controlplane.errors import ValidationFailed

#: Largest id a ``bigint`` identity column can hold.
MAX_ID = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class PageSize:
    """Rows per page when the client does not say, and the most one page may hold."""

    default: int
    maximum: int


#: The tenant API's listings (cards, players, teams, manufacturers, users).
TENANT_PAGES = PageSize(default=50, maximum=200)
#: The audit listings (a tenant's ``audit_log``, ``platform_audit``).
AUDIT_PAGES = PageSize(default=100, maximum=500)


class InvalidCursor(ValidationFailed):
    """The pagination cursor is malformed or was issued by another listing (or for another order)."""

    code = "invalid_cursor"


def encode_cursor(listing: str, value: Any, row_id: int) -> str:
    """An opaque token for "after this row" in ``listing`` (``value``: the row's sort key)."""
    return base64.urlsafe_b64encode(msgspec.json.encode([listing, value, row_id])).rstrip(b"=").decode()


def decode_cursor(cursor: str, listing: str, value_type: Any = Any, *, nullable: bool = False) -> tuple[Any, int]:
    """(sort value, id) from a cursor issued by ``listing``; ``InvalidCursor`` for anything else.

    The sort value must be a ``value_type`` (a ``msgspec`` type, constraints included), or None if
    ``nullable``; the id a positive ``bigint``.
    """
    try:
        raw = base64.b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        issued_for, value, row_id = msgspec.json.decode(raw, type=tuple[str, Any, int])
        if issued_for != listing:
            raise InvalidCursor(f"this cursor belongs to {issued_for!r}, not to {listing!r}; start again without it")
        if not 0 < row_id <= MAX_ID:
            raise ValueError("id out of range")
        if value is not None or not nullable:
            value = msgspec.convert(value, type=value_type)
    except (ValueError, binascii.Error, msgspec.MsgspecError) as exc:
        raise InvalidCursor("the cursor is not one this listing issued; start again without it") from exc
    return value, row_id
