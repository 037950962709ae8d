"""The CardVault API of one tenant: CRUD, keyset pages, card images, quotas and error translation.

A ``CardVault`` works on one request's connection to the tenant's own database and never commits:
the request wrapper does (or rolls back on an error). Each write runs in a savepoint so a refused
statement is translated into a domain error (422 ``invalid_reference``, 409 ``conflict`` / ``in_use``,
422 ``constraint_violation``) without poisoning the transaction.

Quotas are exact under concurrency: a create first locks its ``usage_counters`` row (kept current by
triggers), compares it with the limit, then inserts; concurrent creates queue on that row lock.
Lock order is always card row -> storage counter -> card counter, so image uploads and card deletes
cannot deadlock each other.

Stored objects are written before their ``files`` row and removed again if the row cannot be written;
objects an operation makes obsolete (a replaced or deleted image) are returned to the caller, which
removes them only after the transaction has committed (``discard``), so a rollback never leaves a row
pointing at a deleted object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import msgspec
import psycopg
from psycopg import errors as pg_errors

from controlplane.audit import repository as audit
from controlplane.auth.models import Permission, Principal
from controlplane.cards import images, repository
from controlplane.cards.errors import (
    ConstraintViolation,
    DuplicateRow,
    ImageMissing,
    ImageTooLarge,
    InvalidReference,
    QuotaExceeded,
    RowInUse,
    RowNotFound,
)
from controlplane.cards.models import (
    Card,
    ImageInfo,
    ListQuery,
    Manufacturer,
    Player,
    Team,
    changes,
)
from controlplane.cards.repository import Row, Table
from controlplane.context import AuditContext
from controlplane.db import AsyncConn
from controlplane.errors import PermissionDenied
from controlplane.paging import MAX_ID, decode_cursor, encode_cursor
from controlplane.registry.models import LimitLookup, QuotaType
from controlplane.storage import Storage, new_key

log = logging.getLogger(__name__)

T = TypeVar("T", bound=msgspec.Struct)


@dataclasses.dataclass(frozen=True)
class Resource(Generic[T]):
    """A table of the API and the type its rows are answered as."""

    table: Table
    output: type[T]

    def load(self, row: Row) -> T:
        return msgspec.convert(row, type=self.output)


MANUFACTURERS = Resource(repository.MANUFACTURERS, Manufacturer)
TEAMS = Resource(repository.TEAMS, Team)
PLAYERS = Resource(repository.PLAYERS, Player)
CARDS = Resource(repository.CARDS, Card)

#: The usage counter each metered quota reads.
_COUNTERS = {QuotaType.CARDS: "cards", QuotaType.USERS: "users", QuotaType.STORAGE_BYTES: "storage_bytes"}
#: What a referencing field points at, for messages.
_TARGETS = {"player_id": "player", "team_id": "team", "manufacturer_id": "manufacturer", "created_by": "user"}


async def enforce_quota(conn: AsyncConn, quota: QuotaType, limits: LimitLookup, *, adding: int = 1) -> None:
    """Refuse (``QuotaExceeded``) if ``adding`` more would pass the limit; else keep the counter locked.

    Call inside the transaction that then creates the rows: the lock on the counter row is held until
    it ends, so the next create sees this one's rows. Unlimited quotas and shrinking changes skip the
    check (the counter's own trigger still serialises the writes).
    """
    if adding <= 0:
        return
    limit = await limits(quota)
    if limit is None:
        return
    usage = await repository.lock_counter(conn, _COUNTERS[quota])
    if usage + adding > limit:
        raise QuotaExceeded(
            f"the {quota.value} quota is {limit} and {usage} are used; this would need {adding} more",
            quota=quota.value,
            limit=limit,
            usage=usage,
        )


#: Who acts when no request does (imports, maintenance, tests of the data layer).
SYSTEM = AuditContext(actor="system")


class CardVault:
    """The API of one tenant on one request's connection (the caller owns the transaction).

    ``principal`` is who acts: cards it creates are its own, and without ``cards:write_all`` it may
    change only those (None: the system itself, which may change anything). Every write is recorded
    in the tenant's ``audit_log`` in the same transaction, with the context ``audit()`` gives (asked
    for only by writes).
    """

    def __init__(
        self,
        conn: AsyncConn,
        tenant_id: uuid.UUID,
        *,
        storage: Storage,
        quota_limits: LimitLookup,
        max_image_bytes: int,
        principal: Principal | None = None,
        audit: Callable[[], AuditContext] = lambda: SYSTEM,
    ) -> None:
        self._conn = conn
        self._tenant_id = tenant_id
        self._storage = storage
        self._limits = quota_limits
        self._max_image_bytes = max_image_bytes
        self._principal = principal
        self._audit = audit

    async def _record(self, action: str, table: Table, row_id: object, details: dict[str, Any] | None = None) -> None:
        ctx = self._audit()
        await audit.record_tenant(self._conn, ctx, f"{table.resource}.{action}", table.resource, row_id, details)

    def _check_owner(self, card: Row) -> None:
        """Without ``cards:write_all``, only the cards one created may be changed."""
        principal = self._principal
        if principal is None or principal.can(Permission.CARDS_WRITE_ALL):
            return
        if principal.user_id is None or card.get("created_by") != principal.user_id:
            raise PermissionDenied(
                f"card {card['id']} was created by someone else; changing it needs {Permission.CARDS_WRITE_ALL}",
                permission=Permission.CARDS_WRITE_ALL.value,
            )

    # -- error translation ----------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self, table: Table, values: Mapping[str, Any] | None = None) -> AsyncIterator[None]:
        """A savepoint around a write; constraint violations become domain errors."""
        try:
            async with self._conn.transaction():
                yield
        except pg_errors.ForeignKeyViolation as exc:
            constraint = exc.diag.constraint_name or ""
            if values is None:  # a delete: something still references the row
                used_by = repository.REFERENCING_TABLE.get(constraint, "other rows")
                raise RowInUse(
                    f"the {table.resource} is still used by {used_by}; delete or change those first",
                    referenced_by=used_by,
                ) from None
            field = table.references.get(constraint, constraint)
            value = values.get(field)
            raise InvalidReference(
                f"{field} {value} does not name an existing {_TARGETS.get(field, 'row')}", field=field, value=value
            ) from None
        except pg_errors.UniqueViolation as exc:
            constraint = exc.diag.constraint_name or ""
            what = table.unique.get(constraint, "values")
            raise DuplicateRow(
                f"another {table.resource} already has this {what}", constraint=constraint, resource=table.resource
            ) from None
        except (pg_errors.IntegrityError, psycopg.DataError) as exc:
            raise ConstraintViolation(
                f"the {table.resource} was refused: {exc.diag.message_primary or 'invalid value'}",
                constraint=exc.diag.constraint_name,
            ) from None

    def _not_found(self, table: Table, row_id: int) -> RowNotFound:
        return RowNotFound(f"no {table.resource} with id {row_id}", resource=table.resource, id=row_id)

    def _check_id(self, table: Table, row_id: int) -> None:
        if not 1 <= row_id <= MAX_ID:  # could never exist; also keeps it inside bigint
            raise self._not_found(table, row_id)

    # -- generic CRUD ---------------------------------------------------------------------------

    async def get(self, resource: Resource[T], row_id: int) -> T:
        self._check_id(resource.table, row_id)
        row = await repository.get(self._conn, resource.table, row_id)
        if row is None:
            raise self._not_found(resource.table, row_id)
        return resource.load(row)

    async def create(self, resource: Resource[T], data: msgspec.Struct) -> T:
        values = changes(data)
        if resource is CARDS:
            # The counter lock is taken outside the savepoint so it lasts until the request commits.
            await enforce_quota(self._conn, QuotaType.CARDS, self._limits)
            if self._principal is not None:
                values["created_by"] = self._principal.user_id
        async with self._writing(resource.table, values):
            row = await repository.insert(self._conn, resource.table, values)
        await self._record("create", resource.table, row["id"])
        return resource.load(row)

    async def update(self, resource: Resource[T], row_id: int, data: msgspec.Struct) -> T:
        """Apply the fields that were sent; an empty change still stamps ``updated_at``."""
        self._check_id(resource.table, row_id)
        values = changes(data)
        if resource is CARDS:
            self._check_owner(await self._lock_card(row_id))
        async with self._writing(resource.table, values):
            row = await repository.update(self._conn, resource.table, row_id, values)
        if row is None:
            raise self._not_found(resource.table, row_id)
        await self._record("update", resource.table, row_id, {"fields": sorted(values)})
        return resource.load(row)

    async def delete(self, resource: Resource[T], row_id: int) -> None:
        if resource is CARDS:
            raise TypeError("delete cards with delete_card (their files go with them)")
        self._check_id(resource.table, row_id)
        async with self._writing(resource.table):
            deleted = await repository.delete(self._conn, resource.table, row_id)
        if not deleted:
            raise self._not_found(resource.table, row_id)
        await self._record("delete", resource.table, row_id)

    async def page(self, resource: Resource[T], query: ListQuery) -> tuple[list[T], str | None]:
        """One page in ``query.sort`` order (ties by id) and the cursor of the next, if any."""
        descending = query.sort.startswith("-")
        key = resource.table.sort_key(query.sort.removeprefix("-"))
        after = (
            decode_cursor(query.cursor, query.sort, key.cursor_type, nullable=key.nullable) if query.cursor else None
        )

        def present(filters: Mapping[str, Any]) -> dict[str, Any]:
            return {column: value for column, value in filters.items() if value is not None}

        rows = await repository.select_page(
            self._conn,
            resource.table,
            sort=key.column,
            descending=descending,
            after=after,
            limit=query.limit + 1,
            q=query.q,
            equals=present(query.equals),
            at_least=present(query.at_least),
            at_most=present(query.at_most),
        )
        items = [resource.load(row) for row in rows[: query.limit]]
        if len(rows) <= query.limit:
            return items, None
        last = rows[query.limit - 1]
        return items, encode_cursor(query.sort, last[key.column], last["id"])

    # -- cards and images -----------------------------------------------------------------------

    async def _lock_card(self, card_id: int) -> Row:
        self._check_id(repository.CARDS, card_id)
        card = await repository.lock_card(self._conn, card_id)
        if card is None:
            raise self._not_found(repository.CARDS, card_id)
        return card

    async def delete_card(self, card_id: int) -> list[str]:
        """Delete the card and its files' rows; the storage keys to ``discard`` after commit."""
        self._check_owner(await self._lock_card(card_id))
        async with self._writing(repository.CARDS):
            keys = await repository.delete_card_files(self._conn, card_id)
            await repository.delete(self._conn, repository.CARDS, card_id)
        await self._record("delete", repository.CARDS, card_id)
        return keys

    async def put_image(self, card_id: int, content_type: str | None, data: bytes) -> tuple[ImageInfo, list[str]]:
        """Store ``data`` as the card's image (replacing any); the info and the keys to ``discard``."""
        if len(data) > self._max_image_bytes:
            raise ImageTooLarge(f"images may be at most {self._max_image_bytes} bytes", limit=self._max_image_bytes)
        image_format = images.check_image(content_type, data)
        card = await self._lock_card(card_id)
        self._check_owner(card)
        old_key: str | None = card["key"]
        await enforce_quota(self._conn, QuotaType.STORAGE_BYTES, self._limits, adding=len(data) - (card["bytes"] or 0))
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        key = new_key(digest, image_format.extension)
        await self._storage.put(self._tenant_id, key, data)
        try:
            async with self._writing(repository.CARDS):
                if old_key is not None:
                    await repository.delete_file(self._conn, old_key)
                await repository.insert_file(
                    self._conn,
                    key=key,
                    content_type=image_format.content_type,
                    size=len(data),
                    sha256=digest,
                    card_id=card_id,
                )
                await repository.set_card_image(self._conn, card_id, key)
                await self._record("image.put", repository.CARDS, card_id, {"bytes": len(data), "sha256": digest})
        except BaseException:
            await self._storage.delete(self._tenant_id, key)
            raise
        info = ImageInfo(content_type=image_format.content_type, bytes=len(data), sha256=digest)
        return info, [] if old_key is None else [old_key]

    async def get_image(self, card_id: int) -> tuple[ImageInfo, bytes]:
        self._check_id(repository.CARDS, card_id)
        # Twice: a replacement committed between reading the row and reading the object has already
        # discarded the old object; the row read again names the new one.
        key = None
        for _ in range(2):
            row = await repository.card_image(self._conn, card_id)
            if row is None:
                await self.get(CARDS, card_id)  # 404 for the card itself first
                raise RowNotFound(f"card {card_id} has no image", resource="image", id=card_id)
            key = row["key"]
            data = await self._storage.get(self._tenant_id, key)
            if data is not None:
                return ImageInfo(content_type=row["content_type"], bytes=row["bytes"], sha256=row["sha256"]), data
        log.warning("tenant %s: stored object %s of card %s is missing", self._tenant_id, key, card_id)
        raise ImageMissing(f"the image of card {card_id} is recorded but its stored object is missing")

    async def delete_image(self, card_id: int) -> list[str]:
        """Remove the card's image; the storage keys to ``discard`` after commit."""
        card = await self._lock_card(card_id)
        self._check_owner(card)
        if card["key"] is None:
            raise RowNotFound(f"card {card_id} has no image", resource="image", id=card_id)
        async with self._writing(repository.CARDS):
            await repository.delete_file(self._conn, card["key"])
            await repository.set_card_image(self._conn, card_id, None)
        await self._record("image.delete", repository.CARDS, card_id)
        return [card["key"]]

    async def discard(self, keys: Iterable[str]) -> None:
        """Remove objects the committed transaction no longer references (failures only logged)."""
        for key in keys:
            try:
                await self._storage.delete(self._tenant_id, key)
            except Exception:
                log.exception("tenant %s: could not remove stored object %s; it is orphaned", self._tenant_id, key)
