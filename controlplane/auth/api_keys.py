"""API keys: their shape, who a key answers to, and what it may do now.

A key never carries more than the identity it answers to has *now*:

- a key made by a user is capped by that user's current role and permissions: its effective role is
  the lower of its own role and the maker's, and its permissions are that role's, less whatever the
  maker has been denied (a maker's extra grants are not inherited). A demoted maker demotes their
  keys; a disabled maker stops them;
- a key made during an impersonation answers to the impersonating super-admin: it records the admin
  (``created_by_admin``) and the admin's login session (``admin_session``), never outlives the
  impersonation token it was made with, and stops as soon as that session ends or the admin is
  disabled (exactly like the impersonation token itself);
- a key with no maker at all (the maker was deleted) does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.auth.models import (
    ROLE_PERMISSIONS,
    Permission,
    Principal,
    PrincipalKind,
    Role,
    effective_permissions,
)
from controlplane.errors import InvalidToken, PermissionDenied

#: API keys: ``cvk_<tenant id hex>_<secret>``. The tenant id lets a key presented to the wrong tenant
#: be told apart (403) from one that does not exist (401) without asking the other tenant's database.
API_KEY_PREFIX = "cvk_"


@dataclass(frozen=True)
class ApiKeyCredential:
    tenant_hex: str
    digest: bytes


@dataclass(frozen=True)
class ApiKeyMaker:
    """Whom a new key answers to (a user, or an impersonating admin and their session), and its expiry."""

    expires_at: dt.datetime | None
    user_id: int | None = None
    admin_id: uuid.UUID | None = None
    admin_session: uuid.UUID | None = None


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_api_key(tenant_id: uuid.UUID) -> tuple[str, str, bytes]:
    """(the key to show once, its display prefix, its hash to store)."""
    secret = secrets.token_urlsafe(32)
    key = f"{API_KEY_PREFIX}{tenant_id.hex}_{secret}"
    return key, key[: len(API_KEY_PREFIX) + 32 + 7], hash_secret(key)


def api_key_maker(principal: Principal, expires_at: dt.datetime | None) -> ApiKeyMaker:
    """Whom a key made by ``principal`` answers to, and when it expires (at most ``expires_at``).

    A user's key (or a key made with a user's key) answers to that user. A key made during an
    impersonation (or with such a key) answers to the super-admin and their session, and expires no
    later than the credential it was made with. Anyone else (the command line's operator) makes none.
    """
    if principal.user_id is not None:
        return ApiKeyMaker(expires_at=expires_at, user_id=principal.user_id)
    bound = principal.expires_at
    if principal.impersonator is not None and principal.impersonator_session is not None and bound is not None:
        return ApiKeyMaker(
            expires_at=bound if expires_at is None else min(expires_at, bound),
            admin_id=principal.impersonator,
            admin_session=principal.impersonator_session,
        )
    raise PermissionDenied(
        f"a {principal.kind.value} cannot make API keys: a key must answer to a user or an impersonating super-admin",
        permission=Permission.API_KEYS_MANAGE.value,
    )


def key_principal(tenant_id: uuid.UUID, row: Mapping[str, Any], *, admin_live: bool) -> Principal:
    """The principal of a live key (``row`` from ``tenant_repository.api_key_by_hash``).

    ``admin_live``: whether the admin session an impersonation-made key depends on is live (ignored for
    keys made by users). Raises ``InvalidToken`` when the key may not act at all.
    """
    if not row["live"]:
        raise InvalidToken("unknown, expired or revoked API key")
    key_role = Role(row["tenant_role"])
    admin_id: uuid.UUID | None = None
    admin_session: uuid.UUID | None = None
    if row["created_by"] is not None:
        if row["maker_role"] is None or row["maker_disabled"]:
            raise InvalidToken("unknown, expired or revoked API key")
        maker_role = Role(row["maker_role"])
        role = key_role if key_role.rank <= maker_role.rank else maker_role
        permissions = ROLE_PERMISSIONS[role] & effective_permissions(maker_role, row["maker_permissions"])
    elif row["created_by_admin"] is not None and row["admin_session"] is not None:
        if not admin_live:
            raise InvalidToken("this API key was made during an impersonation that has ended")
        role, permissions = key_role, ROLE_PERMISSIONS[key_role]
        admin_id, admin_session = row["created_by_admin"], row["admin_session"]
    else:
        raise InvalidToken("this API key has no maker any more")
    return Principal(
        kind=PrincipalKind.API_KEY,
        subject=f"api_key:{row['id']}",
        label=row["name"],
        role=role,
        permissions=frozenset(permissions),
        tenant_id=tenant_id,
        user_id=row["created_by"],
        impersonator=admin_id,
        impersonator_session=admin_session,
        expires_at=row["expires_at"],
    )
