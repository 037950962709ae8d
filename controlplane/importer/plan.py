"""What an import writes: the legacy rows with their final ids, merged where they must be.

``build_plan`` is pure: given the normalised legacy data and the tenant's state (read under the
import's locks), it decides per table whether the legacy ids are kept (the table is empty and every id
is positive: old links keep working) or mapped to new ones after the table's current ids, and rewrites
every reference accordingly. It also merges what may exist only once:

- **users** with the same email ignoring case (PostgreSQL's ``lower()``, which the unique index uses):
  the most recent account (highest legacy id) is kept, with the highest role of the group; the others'
  cards are attributed to it. A user whose email is already a user of the tenant is merged into that
  account (which keeps its own password and role).
- **manufacturers** (unique name) and **teams** (unique name and league): the first of equal names is
  kept, or the tenant's existing row.

Users whose hash cannot be kept get no password (``''`` never verifies) and an invitation that has
already expired: a tenant admin sends them a fresh one (``POST /users/{id}/invitation``).
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from controlplane.auth.service import hash_secret
from controlplane.importer import normalize
from controlplane.importer.legacy import LegacyData, LegacyUser
from controlplane.importer.models import IssueKind, Issues, PasswordReset
from controlplane.importer.uploads import ImageSource

KEPT, MAPPED = "kept", "mapped"

USER_COLUMNS = (
    "id", "email", "password_hash", "tenant_role", "display_name", "disabled", "created_at", "updated_at",
    "invite_hash", "invite_expires_at",
)  # fmt: skip
MANUFACTURER_COLUMNS = ("id", "name")
TEAM_COLUMNS = ("id", "name", "city", "league")
PLAYER_COLUMNS = ("id", "first_name", "last_name", "team_id", "position")
CARD_COLUMNS = (
    "id", "cardnumber", "player_id", "team_id", "manufacturer_id", "year", "image", "condition", "notes",
    "created_by", "created_at", "updated_at",
)  # fmt: skip
#: Position of ``image`` (the stored object's key) in a card row: filled in once the images are stored.
CARD_IMAGE = CARD_COLUMNS.index("image")


@dataclasses.dataclass(frozen=True)
class TableState:
    """A tenant table before the import: its highest id and its identity sequence's last value."""

    max_id: int | None
    last_value: int | None


@dataclasses.dataclass
class TargetState:
    """The tenant as the import finds it (under its locks)."""

    tables: dict[str, TableState]
    #: ``lower(email)`` -> user id.
    users: dict[str, int]
    #: name -> id.
    manufacturers: dict[str, int]
    #: (name, league) -> id.
    teams: dict[tuple[str, str | None], int]
    #: The database's ``now()``: the fallback of unreadable dates.
    now: datetime


@dataclasses.dataclass
class Plan:
    ids: dict[str, str]
    users: list[tuple[Any, ...]]
    manufacturers: list[tuple[Any, ...]]
    teams: list[tuple[Any, ...]]
    players: list[tuple[Any, ...]]
    cards: list[list[Any]]
    #: (final card id, image file) of every card with a usable image.
    images: list[tuple[int, ImageSource]]
    resets: list[PasswordReset]
    merged: dict[str, int]

    @property
    def image_bytes(self) -> int:
        return sum(source.size for _, source in self.images)

    def counts(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "manufacturers": len(self.manufacturers),
            "teams": len(self.teams),
            "players": len(self.players),
            "cards": len(self.cards),
            "images": len(self.images),
        }


def _assign(legacy_ids: Sequence[int], state: TableState) -> tuple[dict[int, int], str]:
    """Final ids: the legacy ones if the table is empty (and they are positive), else new ones after
    everything the table and its sequence have used, in legacy id order."""
    if state.max_id is None and all(i >= 1 for i in legacy_ids):
        return {i: i for i in legacy_ids}, KEPT
    base = max(state.max_id or 0, state.last_value or 0)
    return {legacy: base + n for n, legacy in enumerate(sorted(legacy_ids), 1)}, MAPPED


class _Merge:
    """Rows that may exist only once by a key: legacy id -> the legacy row kept, or an existing row."""

    def __init__(self, issues: Issues, table: str, existing: dict[Any, int]) -> None:
        self._issues, self._table, self._existing = issues, table, existing
        self._first: dict[Any, int] = {}
        self.alias: dict[int, int] = {}
        self.existing: dict[int, int] = {}

    def take(self, legacy_id: int, key: Any, shown: str) -> bool:
        """Whether the row is inserted (else it is merged into an earlier or existing one)."""
        if key in self._existing:
            self.existing[legacy_id] = self._existing[key]
            self._issues.add(
                IssueKind.DUPLICATE_NAME, self._table, legacy_id, field="name", value=shown,
                detail=f"already in the tenant (id {self._existing[key]}): merged into it",
            )  # fmt: skip
            return False
        if key in self._first:
            self.alias[legacy_id] = self._first[key]
            self._issues.add(
                IssueKind.DUPLICATE_NAME, self._table, legacy_id, field="name", value=shown,
                detail=f"same as legacy row {self._first[key]}: merged into it",
            )  # fmt: skip
            return False
        self._first[key] = legacy_id
        return True

    def final(self, ids: dict[int, int]) -> dict[int, int]:
        return {**ids, **{legacy: ids[kept] for legacy, kept in self.alias.items()}, **self.existing}


def build_plan(legacy: LegacyData, target: TargetState, lowered_emails: Sequence[str]) -> Plan:
    """The rows to write (see the module doc); issues go into ``legacy.issues``."""
    issues, now = legacy.issues, target.now
    ids: dict[str, str] = {}

    users, user_ids, resets, merged = _users(legacy, target, lowered_emails, ids)

    makers = _Merge(issues, "manufacturers", target.manufacturers)
    kept_makers = [(lid, name) for lid, name in legacy.manufacturers if makers.take(lid, name, name)]
    maker_ids, ids["manufacturers"] = _assign([lid for lid, _ in kept_makers], target.tables["manufacturers"])
    maker_final = makers.final(maker_ids)

    teams = _Merge(issues, "teams", target.teams)
    kept_teams = [t for t in legacy.teams if teams.take(t.id, (t.name, t.league), t.name)]
    team_ids, ids["teams"] = _assign([t.id for t in kept_teams], target.tables["teams"])
    team_final = teams.final(team_ids)

    player_ids, ids["players"] = _assign([p.id for p in legacy.players], target.tables["players"])
    card_ids, ids["cards"] = _assign([c.id for c in legacy.cards], target.tables["cards"])

    def ref(mapping: dict[int, int], legacy_id: int | None) -> int | None:
        return None if legacy_id is None else mapping[legacy_id]

    cards: list[list[Any]] = []
    images: list[tuple[int, ImageSource]] = []
    for c in legacy.cards:
        created = c.created_at or now
        card_id = card_ids[c.id]
        cards.append(
            [
                card_id, c.cardnumber, ref(player_ids, c.player_id), ref(team_final, c.team_id),
                ref(maker_final, c.manufacturer_id), c.year, None, c.condition, c.notes,
                ref(user_ids, c.created_by), created, c.updated_at or created,
            ]
        )  # fmt: skip
        if c.image is not None:
            images.append((card_id, c.image))
    return Plan(
        ids=ids,
        users=users,
        manufacturers=[(maker_ids[lid], name) for lid, name in kept_makers],
        teams=[(team_ids[t.id], t.name, t.city, t.league) for t in kept_teams],
        players=[
            (player_ids[p.id], p.first_name, p.last_name, ref(team_final, p.team_id), p.position)
            for p in legacy.players
        ],
        cards=cards,
        images=images,
        resets=resets,
        merged=merged,
    )


def _users(
    legacy: LegacyData, target: TargetState, lowered: Sequence[str], ids: dict[str, str]
) -> tuple[list[tuple[Any, ...]], dict[int, int], list[PasswordReset], dict[str, int]]:
    """User rows, legacy id -> final user id, the password resets and the merge counts."""
    issues = legacy.issues
    groups: dict[str, list[LegacyUser]] = {}
    for user, key in zip(legacy.users, lowered, strict=True):
        groups.setdefault(key, []).append(user)
    inserted: list[LegacyUser] = []
    alias: dict[int, int] = {}
    existing: dict[int, int] = {}
    merged = {"duplicate_email": 0, "existing_user": 0}
    for key, members in groups.items():
        keep = max(members, key=lambda u: u.id)
        for member in members:
            if member is not keep:
                alias[member.id] = keep.id
                merged["duplicate_email"] += 1
                issues.add(
                    IssueKind.DUPLICATE_EMAIL, "users", member.id, field="email", value=member.email,
                    detail=f"same email as user {keep.id} (kept: the most recent account); its cards are "
                    "attributed to that account",
                )  # fmt: skip
        if key in target.users:
            for member in members:
                existing[member.id] = target.users[key]
            merged["existing_user"] += 1
            issues.add(
                IssueKind.EXISTING_USER, "users", keep.id, field="email", value=keep.email,
                detail=f"already a user of the tenant (id {target.users[key]}): merged into that account, "
                "which keeps its password and role",
            )  # fmt: skip
            continue
        keep.role = functools.reduce(normalize.higher_role, (m.role for m in members))
        inserted.append(keep)
    final, ids["users"] = _assign([u.id for u in inserted], target.tables["users"])
    rows: list[tuple[Any, ...]] = []
    resets: list[PasswordReset] = []
    for user in inserted:
        user_id = final[user.id]
        invite_hash, invite_expires = None, None
        if user.reset is not None:
            # An invitation nobody holds, already expired: the account waits for an admin to resend it.
            invite_hash, invite_expires = hash_secret(secrets.token_urlsafe(32)), target.now
            resets.append(PasswordReset(legacy_id=user.id, user_id=user_id, email=user.email, reason=user.reset))
            issues.add(IssueKind.PASSWORD_RESET, "users", user.id, field="password", detail=user.reset)
        created = user.created_at or target.now
        rows.append(
            (
                user_id, user.email, user.password_hash, user.role, user.display_name, user.disabled, created,
                created, invite_hash, invite_expires,
            )
        )  # fmt: skip
    user_ids = {**final, **{legacy_id: final[kept] for legacy_id, kept in alias.items() if kept in final}, **existing}
    return rows, user_ids, resets, merged
