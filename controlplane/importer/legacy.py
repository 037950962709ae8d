"""Reading a legacy CardVault SQLite file (``../shared/legacy/cardvault-sqlite.sql``) into clean rows.

``read_legacy`` is blocking (stdlib ``sqlite3``, the uploads folder): run it in a worker thread. It opens
the file read-only, checks it has the installation's tables, and normalises every value
(``normalize``): references to rows that do not exist become NULL, unusable years and conditions NULL,
unreadable dates fall back, users get a usable email or a placeholder, and image paths are resolved in
the uploads folder. Everything not taken as it was goes into the ``Issues``. Ids stay the legacy ones
here; ``plan`` decides what they become in the tenant.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from controlplane.auth.passwords import normalize_email
from controlplane.errors import ValidationFailed
from controlplane.importer import normalize
from controlplane.importer.errors import InvalidLegacyFile
from controlplane.importer.models import IssueKind, Issues
from controlplane.importer.uploads import ImageSource, locate

#: Columns read per table: (required, optional). A missing optional column reads as NULL.
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "users": (("id", "username", "password"), ("email", "role", "created_at")),
    "manufacturers": (("id", "name"), ()),
    "teams": (("id", "name"), ("city", "league")),
    "players": (("id", "last_name"), ("first_name", "team_id", "position")),
    "cards": (
        ("id", "cardnumber"),
        (
            "player_id", "team_id", "manufacturer_id", "year", "image", "condition", "notes", "created_by",
            "created_at", "updated_at",
        ),
    ),
}  # fmt: skip
#: Where users without a usable email end up (``.invalid`` never delivers: RFC 2606).
PLACEHOLDER_DOMAIN = "import.invalid"
_BATCH = 10_000
#: Distinct raw values whose normalisation is remembered (dates, years and conditions repeat a lot).
_CACHE = 16_384
Row = sqlite3.Row


@dataclasses.dataclass(slots=True)
class LegacyUser:
    id: int
    email: str
    display_name: str | None
    #: The bcrypt hash kept, or '' (never verifies) when ``reset`` says why it cannot be kept.
    password_hash: str
    reset: str | None
    role: str
    #: A placeholder account (no usable email): kept for its cards, cannot sign in.
    disabled: bool
    created_at: datetime | None


@dataclasses.dataclass(slots=True)
class LegacyTeam:
    id: int
    name: str
    city: str | None
    league: str | None


@dataclasses.dataclass(slots=True)
class LegacyPlayer:
    id: int
    first_name: str | None
    last_name: str
    team_id: int | None
    position: str | None


@dataclasses.dataclass(slots=True)
class LegacyCard:
    id: int
    cardnumber: str
    player_id: int | None
    team_id: int | None
    manufacturer_id: int | None
    year: int | None
    condition: str | None
    notes: str | None
    created_by: int | None
    created_at: datetime | None
    updated_at: datetime | None
    image: ImageSource | None


@dataclasses.dataclass
class LegacyData:
    """A legacy installation, normalised (legacy ids; references checked to exist)."""

    users: list[LegacyUser]
    manufacturers: list[tuple[int, str]]
    teams: list[LegacyTeam]
    players: list[LegacyPlayer]
    cards: list[LegacyCard]
    issues: Issues

    @property
    def image_bytes(self) -> int:
        return sum(card.image.size for card in self.cards if card.image is not None)


def read_legacy(path: Path, uploads: Path | None, *, max_image_bytes: int) -> LegacyData:
    """The installation in ``path`` (SQLite) with its images in ``uploads``, normalised. Blocking."""
    if not path.is_file():
        raise InvalidLegacyFile(f"no such file: {path}")
    root = uploads.resolve() if uploads is not None else None
    if root is not None and not root.is_dir():
        raise InvalidLegacyFile(f"the uploads folder {uploads} is not a directory")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InvalidLegacyFile(f"cannot open {path.name} as SQLite: {exc}") from None
    try:
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        conn.row_factory = sqlite3.Row
        return _Reader(conn, root, max_image_bytes).read()
    except sqlite3.Error as exc:
        raise InvalidLegacyFile(f"{path.name} is not a readable SQLite database: {exc}") from None
    finally:
        conn.close()


class _Reader:
    def __init__(self, conn: sqlite3.Connection, root: Path | None, max_image_bytes: int) -> None:
        self._conn = conn
        self._root = root
        self._max_image_bytes = max_image_bytes
        self.issues = Issues()
        self._timestamp = functools.lru_cache(_CACHE)(normalize.timestamp)
        self._year = functools.lru_cache(_CACHE)(normalize.year)
        self._condition = functools.lru_cache(_CACHE)(normalize.condition)

    def read(self) -> LegacyData:
        columns = {table: self._columns(table) for table in COLUMNS}
        users = [self._user(row) for row in self._rows("users", columns["users"])]
        manufacturers = [
            (row["id"], self._text("manufacturers", row, "name").strip())
            for row in self._rows("manufacturers", columns["manufacturers"])
        ]
        teams = [self._team(row) for row in self._rows("teams", columns["teams"])]
        team_ids = {team.id for team in teams}
        players = [self._player(row, team_ids) for row in self._rows("players", columns["players"])]
        known = {
            "player_id": ({p.id for p in players}, "players"),
            "team_id": (team_ids, "teams"),
            "manufacturer_id": ({m[0] for m in manufacturers}, "manufacturers"),
            "created_by": ({u.id for u in users}, "users"),
        }
        cards = [self._card(row, known) for row in self._rows("cards", columns["cards"])]
        return LegacyData(users, manufacturers, teams, players, cards, self.issues)

    # -- reading ------------------------------------------------------------------------------------

    def _columns(self, table: str) -> str:
        """The select list of ``table``: every column of ``COLUMNS``, a missing optional one as NULL."""
        present = {row[1].lower() for row in self._conn.execute(f"PRAGMA table_info({table})")}
        if not present:
            raise InvalidLegacyFile(f"not a CardVault installation: it has no {table} table")
        required, optional = COLUMNS[table]
        missing = [c for c in required if c not in present]
        if missing:
            raise InvalidLegacyFile(f"not a CardVault installation: {table} lacks {', '.join(missing)}")
        return ", ".join([*required, *(c if c in present else f"NULL AS {c}" for c in optional)])

    def _rows(self, table: str, columns: str) -> Iterator[Row]:
        # Names come from COLUMNS (checked against the file), never from the file's own text.
        cursor = self._conn.execute(f"SELECT {columns} FROM {table} ORDER BY id")  # noqa: S608
        while batch := cursor.fetchmany(_BATCH):
            for row in batch:
                if isinstance(row["id"], int):  # INTEGER PRIMARY KEY: always an integer in SQLite
                    yield row

    def _text(self, table: str, row: Row, field: str) -> str:
        raw = row[field]
        if type(raw) is str and "\x00" not in raw:
            return raw
        value, cleaned = normalize.text(raw)
        if cleaned:
            self.issues.add(IssueKind.TEXT_CLEANED, table, row["id"], field=field, detail="NUL characters removed")
        return value or ""

    def _optional(self, table: str, row: Row, field: str) -> str | None:
        return normalize.optional(self._text(table, row, field))

    def _date(self, table: str, row: Row, field: str) -> datetime | None:
        moment, problem = self._timestamp(row[field])
        if problem is not None:
            self.issues.add(IssueKind.BAD_DATE, table, row["id"], field=field, value=row[field], detail=problem)
        return moment

    def _ref(self, table: str, row: Row, field: str, known: set[int], target: str) -> int | None:
        raw = row[field]
        if type(raw) is int and raw in known:
            return raw
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        ref = normalize.ref_id(raw)
        if ref is None or ref not in known:
            self.issues.add(
                IssueKind.ORPHAN_REFERENCE, table, row["id"], field=field, value=raw, detail=f"no such row in {target}"
            )
            return None
        return ref

    # -- tables -------------------------------------------------------------------------------------

    def _user(self, row: Row) -> LegacyUser:
        uid = row["id"]
        username = self._optional("users", row, "username")
        email = _usable_email(self._text("users", row, "email"))
        disabled = False
        if email is None:
            email = _usable_email(username or "")
            if email is not None:
                detail = "no usable email: the username, which is an address, is used"
            else:
                email, disabled = f"legacy-user-{uid}@{PLACEHOLDER_DOMAIN}", True
                detail = f"no usable email: imported disabled as {email} (it cannot sign in)"
            self.issues.add(IssueKind.MISSING_EMAIL, "users", uid, field="email", value=row["email"], detail=detail)
        role, problem = normalize.role(row["role"])
        if problem is not None:
            self.issues.add(IssueKind.UNKNOWN_ROLE, "users", uid, field="role", value=row["role"], detail=problem)
        raw_hash = row["password"]
        kind = normalize.password_kind(raw_hash)
        reset = None
        if kind == "sha256":
            reset = "sha256 hash: cannot be verified safely"
        elif kind != "bcrypt":
            reset = "unrecognised password hash"
        return LegacyUser(
            id=uid,
            email=email,
            display_name=username,
            password_hash=str(raw_hash).strip() if reset is None and not disabled else "",
            reset=None if disabled else reset,
            role=role,
            disabled=disabled,
            created_at=self._date("users", row, "created_at"),
        )

    def _team(self, row: Row) -> LegacyTeam:
        return LegacyTeam(
            id=row["id"],
            name=self._text("teams", row, "name").strip(),
            city=self._optional("teams", row, "city"),
            league=self._optional("teams", row, "league"),
        )

    def _player(self, row: Row, team_ids: set[int]) -> LegacyPlayer:
        return LegacyPlayer(
            id=row["id"],
            first_name=self._optional("players", row, "first_name"),
            last_name=self._text("players", row, "last_name").strip(),
            team_id=self._ref("players", row, "team_id", team_ids, "teams"),
            position=self._optional("players", row, "position"),
        )

    def _card(self, row: Row, known: dict[str, tuple[set[int], str]]) -> LegacyCard:
        cid = row["id"]
        refs = {field: self._ref("cards", row, field, ids, target) for field, (ids, target) in known.items()}
        year, problem = self._year(row["year"])
        if problem is not None:
            self.issues.add(IssueKind.BAD_YEAR, "cards", cid, field="year", value=row["year"], detail=problem)
        condition, problem, rounded = self._condition(row["condition"])
        if problem is not None:
            kind = IssueKind.CONDITION_ROUNDED_DOWN if rounded else IssueKind.BAD_CONDITION
            self.issues.add(kind, "cards", cid, field="condition", value=row["condition"], detail=problem)
        return LegacyCard(
            id=cid,
            cardnumber=self._text("cards", row, "cardnumber").strip(),
            player_id=refs["player_id"],
            team_id=refs["team_id"],
            manufacturer_id=refs["manufacturer_id"],
            year=year,
            condition=condition,
            notes=self._optional("cards", row, "notes"),
            created_by=refs["created_by"],
            created_at=self._date("cards", row, "created_at"),
            updated_at=self._date("cards", row, "updated_at"),
            image=self._image(cid, row["image"]),
        )

    def _image(self, card_id: int, raw: object) -> ImageSource | None:
        path, _ = normalize.text(raw)
        if path is None or not path.strip():
            return None
        source, problem, missing = locate(self._root, path, self._max_image_bytes)
        if problem is not None:
            kind = IssueKind.MISSING_IMAGE if missing else IssueKind.BAD_IMAGE
            self.issues.add(kind, "cards", card_id, field="image", value=path, detail=problem)
        return source


def _usable_email(value: str) -> str | None:
    try:
        return normalize_email(value)
    except ValidationFailed:
        return None
