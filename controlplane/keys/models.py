"""What a master-key rotation works on and what it reports."""

from __future__ import annotations

import msgspec


class SecretColumn(msgspec.Struct, frozen=True, kw_only=True):
    """A place in the control database that holds values encrypted with the master key."""

    table: str
    column: str
    #: Path to the value inside a jsonb column; empty when the column itself holds the encrypted text.
    path: tuple[str, ...] = ()
    #: Columns that identify a row: the primary key (``ctid`` for a table without one).
    key: tuple[str, ...] = ("ctid",)

    @property
    def name(self) -> str:
        """``table.column``, or ``table.column->a.b`` for a value inside jsonb."""
        inner = "->" + ".".join(self.path) if self.path else ""
        return f"{self.table}.{self.column}{inner}"


class ColumnCounts(msgspec.Struct, kw_only=True):
    """Per column: how its values stand, or what a rotation did to them."""

    column: str
    #: Values looked at (NULLs are not values).
    values: int = 0
    #: Already encrypted with the current key.
    current: int = 0
    #: Encrypted with a previous key only (counted by ``status``).
    previous: int = 0
    #: Re-encrypted with the current key by this rotation.
    reencrypted: int = 0
    #: Changed by someone else between the read and the swap: left as that writer made it.
    changed: int = 0
    #: Readable with no configured key.
    unreadable: int = 0


class KeyReport(msgspec.Struct, kw_only=True):
    """Every secret column of the control database and where its values stand."""

    columns: list[ColumnCounts]
    #: How many previous keys the process has (``CARDVAULT_SECRET_KEY_PREVIOUS``).
    previous_keys: int

    @property
    def reencrypted(self) -> int:
        return sum(c.reencrypted for c in self.columns)

    @property
    def remaining(self) -> int:
        """Values readable only with a previous key: while not 0, no previous key may be removed."""
        return sum(c.previous for c in self.columns)

    @property
    def unreadable(self) -> int:
        return sum(c.unreadable for c in self.columns)
