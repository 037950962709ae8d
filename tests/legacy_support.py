"""Legacy single-tenant CardVault installations for the import tests, and what the tests compare with.

``LEGACY_SCHEMA`` is the schema self-hosters' SQLite files have (``../shared/legacy/cardvault-sqlite.sql``).
``clean_installation`` writes a tidy one, ``dirty_installation`` one with every anomaly the schema's
comment lists (years as text, free-text conditions, dates in several formats, references to rows that
no longer exist, duplicate emails differing in case, image paths to missing files) and a few more, and
``large_installation`` 100,000 cards with ``executemany``. Each returns a ``Legacy``: the file, its
uploads folder and the rows as written. ``tenant_snapshot`` captures a tenant database, its stored files
and the registry, to prove a failed import changed nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
from psycopg.rows import dict_row

LEGACY_SCHEMA = """
PRAGMA foreign_keys = OFF;
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT NOT NULL, email TEXT, password TEXT NOT NULL,
    role TEXT DEFAULT 'user', created_at TEXT DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE manufacturers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);
CREATE TABLE teams (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, city TEXT, league TEXT);
CREATE TABLE players (
    id INTEGER PRIMARY KEY AUTOINCREMENT, first_name TEXT, last_name TEXT NOT NULL,
    team_id INTEGER REFERENCES teams(id), position TEXT);
CREATE TABLE cards (
    id INTEGER PRIMARY KEY AUTOINCREMENT, cardnumber TEXT NOT NULL, player_id INTEGER REFERENCES players(id),
    team_id INTEGER REFERENCES teams(id), manufacturer_id INTEGER REFERENCES manufacturers(id), year INTEGER,
    image TEXT, condition TEXT, notes TEXT, created_by INTEGER REFERENCES users(id),
    created_at TEXT DEFAULT CURRENT_TIMESTAMP, updated_at TEXT);
CREATE INDEX idx_cards_player ON cards(player_id);
CREATE INDEX idx_cards_year ON cards(year);
"""

#: The password of every bcrypt user the generators make (and of the sha256 ones, which cannot use it).
LEGACY_PASSWORD = "the old legacy password"
CARD_COLUMNS = (
    "id", "cardnumber", "player_id", "team_id", "manufacturer_id", "year", "image", "condition", "notes",
    "created_by", "created_at", "updated_at",
)  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
WEBP = b"RIFF\x00\x10\x00\x00WEBPVP8 "

Row = tuple[Any, ...]


def bcrypt_hash(password: str = LEGACY_PASSWORD, cost: int = 4) -> str:
    """What legacy installations stored (cost 10 there; 4 keeps the tests fast, any cost verifies)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def sha256_hash(password: str = LEGACY_PASSWORD) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclasses.dataclass
class Legacy:
    path: Path
    uploads: Path
    users: list[Row]
    manufacturers: list[Row]
    teams: list[Row]
    players: list[Row]
    cards: list[Row]
    #: Card id -> the image bytes its path leads to (usable images only).
    images: dict[int, bytes] = dataclasses.field(default_factory=dict)

    def card(self, card_id: int) -> dict[str, Any]:
        return next(dict(zip(CARD_COLUMNS, c, strict=True)) for c in self.cards if c[0] == card_id)


def write_legacy(path: Path, legacy_rows: dict[str, list[Row]]) -> None:
    """A SQLite file of the legacy schema holding ``legacy_rows`` (table -> rows, every column, ids given)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_SCHEMA)
        for table, rows in legacy_rows.items():
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)  # noqa: S608 - test data
    conn.close()


def _image(uploads: Path, relative: str, head: bytes, size: int = 400) -> bytes:
    data = head + os.urandom(size - len(head))
    target = uploads / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return data


def clean_installation(directory: Path) -> Legacy:
    """Four users (bcrypt admin, editor and user; one sha256 user), three manufacturers and teams, five
    players, cards with gaps in their ids and images in three formats (one in a subfolder)."""
    uploads = directory / "uploads"
    uploads.mkdir(parents=True)
    users = [
        (1, "boss", "boss@legacy.test", bcrypt_hash(), "admin", "2019-01-02 10:00:00"),
        (2, "ed", "Ed@Legacy.test", bcrypt_hash(), "editor", "2019-02-03 11:00:00"),
        (3, "old-timer", "oldtimer@legacy.test", sha256_hash(), "user", "2019-03-04 12:00:00"),
        (4, "fan", "fan@legacy.test", bcrypt_hash(), "user", "2020-05-06 13:00:00"),
    ]
    manufacturers = [(1, "Topps"), (2, "Upper Deck"), (3, "Fleer")]
    teams = [(1, "Yankees", "New York", "AL"), (2, "Mets", "New York", "NL"), (3, "Cubs", "Chicago", "NL")]
    players = [
        (1, "Derek", "Jeter", 1, "SS"),
        (2, "Mike", "Piazza", 2, "C"),
        (3, "Sammy", "Sosa", 3, "RF"),
        (4, None, "Rivera", 1, "P"),
        (5, "Ken", "Griffey", None, "CF"),
    ]
    cards = [
        (1, "T-1", 1, 1, 1, 1996, "jeter.png", "Mint", "rookie", 1, "2019-04-01 09:00:00", None),
        (2, "T-2", 2, 2, 1, 1997, "piazza.jpg", "NM", None, 2, "2019-04-02 09:00:00", "2019-05-01 10:00:00"),
        (3, "UD-3", 3, 3, 2, 1998, "cards/2019/sosa.webp", "near mint", "signed", 2, "2019-04-03 09:00:00", None),
        (5, "UD-5", 4, 1, 2, 1999, None, "EX", None, 4, "2019-04-05 09:00:00", None),
        (8, "F-8", 5, None, 3, 1989, None, "poor", "creased", 1, "2020-01-01 00:00:00", None),
        (13, "F-13", 1, 1, 3, 2001, "jeter.png", "good", None, 3, "2020-01-02 00:00:00", None),
    ]
    images = {
        1: _image(uploads, "jeter.png", PNG),
        2: _image(uploads, "piazza.jpg", JPEG, 600),
        3: _image(uploads, "cards/2019/sosa.webp", WEBP, 500),
    }
    images[13] = images[1]  # two cards, one picture: each card gets its own stored object
    legacy = Legacy(directory / "cardvault.db", uploads, users, manufacturers, teams, players, cards, images)
    _write(legacy)
    return legacy


def dirty_installation(directory: Path) -> Legacy:
    """Every anomaly real files have (see the module doc), each on its own row."""
    uploads = directory / "uploads"
    uploads.mkdir(parents=True)
    (directory / "secret.jpg").write_bytes(JPEG + b"outside the uploads folder")
    (uploads / "notes.jpg").write_bytes(b"this is not an image at all")
    users = [
        (1, "admin", "admin@legacy.test", bcrypt_hash(), "admin", "2019-01-02 10:00:00"),
        (2, "hasher", "hasher@legacy.test", sha256_hash(), "editor", "04/03/2019"),
        (3, "weird", "weird@legacy.test", "plaintext-password", "superuser", "yesterday"),
        (4, "mail@username.test", None, bcrypt_hash(), "user", 1551701696),
        (5, "Dupe", "Dup@Legacy.test", bcrypt_hash(), "editor", "2019-03-01"),
        (6, "dupe", "dup@legacy.test", bcrypt_hash(), "user", "2020-03-01"),
        (7, "nomail", "", bcrypt_hash(), None, None),
    ]
    manufacturers = [(1, "Topps"), (2, "Topps "), (3, "Donruss")]
    teams = [(1, "Yankees", "New York", "AL"), (2, "Giants", "", None), (3, "Giants", None, "")]
    players = [(1, "Babe", "Ruth", 1, "RF"), (2, "Willie", "Mays", 99, "CF"), (3, "", "Unknown", "abc", "")]
    cards = [
        (1, "C1", 1, 1, 1, "1996", "missing.png", "Mint", None, 1, "2019-03-04 12:34:56", None),
        (2, "C2", 2, 2, 2, "1996a", None, "NM", None, 5, "13/03/2019", "04/03/2019"),
        (3, "C3", 999, 77, 55, "", "../secret.jpg", "near mint", "has\x00nul", 42, 1551701696, None),
        (4, "C4", 3, 3, 3, 1700, "notes.jpg", "EX-MT", None, 6, "Mar 4, 2019", None),
        (5, "C5", None, None, None, 2101, "ok.png", "poor", None, 7, "yesterday", None),
        (6, "C6", None, None, None, "96", None, "damaged", None, 2, "2019-03-04T12:34:56Z", None),
        (7, "C7", None, None, None, 1999, None, "EX", None, "3", "04.03.2019", None),
    ]
    images = {5: _image(uploads, "ok.png", PNG)}
    legacy = Legacy(directory / "dirty.db", uploads, users, manufacturers, teams, players, cards, images)
    _write(legacy)
    return legacy


def large_installation(directory: Path, cards: int = 100_000, seed: int = 13) -> Legacy:
    """``cards`` cards over 2,000 players, 30 teams, 10 manufacturers and 50 users, a few dirty values."""
    rng = random.Random(seed)
    hashed = bcrypt_hash()
    users = [
        (i, f"user{i}", f"user{i}@big.test", hashed if i % 5 else sha256_hash(), "user", None) for i in range(1, 51)
    ]
    manufacturers = [(i, f"Maker {i}") for i in range(1, 11)]
    teams = [(i, f"Team {i}", f"City {i}", "AL" if i % 2 else "NL") for i in range(1, 31)]
    players = [(i, f"First{i}", f"Last{i}", rng.randint(1, 30), "P") for i in range(1, 2001)]
    conditions = ("Mint", "NM", "near mint", "EX", "VG", "good", "poor", "EX-MT", None)
    rows = [
        (
            i, f"BIG-{i:06d}", rng.randint(1, 2000), rng.randint(1, 30), rng.randint(1, 10),
            rng.randint(1950, 2020) if i % 97 else "19x0", None, conditions[i % len(conditions)],
            f"note {rng.randint(1, 5000)}", rng.randint(1, 50), "2021-06-01 12:00:00", None,
        )
        for i in range(1, cards + 1)
    ]  # fmt: skip
    legacy = Legacy(directory / "large.db", directory / "uploads", users, manufacturers, teams, players, rows)
    _write(legacy)
    return legacy


def _write(legacy: Legacy) -> None:
    write_legacy(
        legacy.path,
        {
            "users": legacy.users,
            "manufacturers": legacy.manufacturers,
            "teams": legacy.teams,
            "players": legacy.players,
            "cards": legacy.cards,
        },
    )


# -- what a tenant looks like, before and after ---------------------------------------------------------

SNAPSHOT_TABLES = ("users", "manufacturers", "teams", "players", "cards", "files", "audit_log", "usage_counters")


def stored_files(directory: Path) -> dict[str, bytes]:
    """The objects in a tenant's storage directory, by name."""
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


async def tenant_snapshot(tenant_dsn: str, storage_dir: Path, control_dsn: str | None = None) -> dict[str, Any]:
    """Every row of the tenant's tables, its identity sequences, its stored files (and with ``control_dsn``
    the registry's rows)."""
    out: dict[str, Any] = {}
    async with await psycopg.AsyncConnection.connect(tenant_dsn, autocommit=True, row_factory=dict_row) as conn:
        for table in SNAPSHOT_TABLES:
            cur = await conn.execute(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - constant names
            out[table] = await cur.fetchall()
        cur = await conn.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
        out["sequences"] = await cur.fetchall()
    out["files_on_disk"] = stored_files(storage_dir)
    if control_dsn is None:
        return out
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True, row_factory=dict_row) as conn:
        for table in ("tenants", "tenant_quotas", "tenant_operations"):
            cur = await conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2")  # noqa: S608 - constant names
            out[table] = await cur.fetchall()
    return out
