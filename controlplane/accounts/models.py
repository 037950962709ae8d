"""Account API types: what a request may send (validated by msgspec) and what it gets back.

Inputs forbid unknown fields and carry their limits, so bad input is a 400 before any SQL runs. PATCH
types default every field to ``UNSET``: a field left out is left alone, ``null`` clears it. Outputs
never carry a password hash, an invitation hash or an API key hash; the one-time secrets (an
invitation token, a new API key) appear only in the response that made them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from controlplane.cards.models import NO_NUL, NOT_BLANK, CardSort

#: The roles a tenant user or API key may be given.
TenantRole = Literal["tenant_admin", "collection_manager", "user"]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=NO_NUL)]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=NO_NUL)]
DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NOT_BLANK)]
#: Permission name -> true (grant) / false (deny) on top of the role; names are checked by the service.
Overrides = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64, pattern=NO_NUL)], bool], msgspec.Meta(max_length=64)
]
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=NOT_BLANK)]
#: BCP 47-ish: ``en``, ``de-CH``, ``zh-Hant-TW``.
Locale = Annotated[str, msgspec.Meta(max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")]
#: An IANA time zone name; checked against ``zoneinfo.available_timezones()`` by the service.
TimeZone = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+$")]
CollectionName = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]


class _Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# -- inputs --------------------------------------------------------------------------------------


class ProfileUpdate(_Input):
    display_name: DisplayName | UnsetType | None = UNSET


class PasswordChange(_Input):
    current_password: Secret
    new_password: Secret


class UserCreate(_Input):
    """With ``password``: a user who can log in at once. Without: an invitation (its token is answered once)."""

    email: Email
    role: TenantRole
    password: Secret | None = None
    display_name: DisplayName | None = None
    permissions: Overrides | None = None


class UserUpdate(_Input):
    """``permissions``, when sent, replaces the user's grants and denials as a whole."""

    role: TenantRole | UnsetType = UNSET
    permissions: Overrides | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET
    display_name: DisplayName | UnsetType | None = UNSET


class ApiKeyCreate(_Input):
    name: KeyName
    role: TenantRole
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class SettingsUpdate(_Input):
    collection_name: CollectionName | UnsetType | None = UNSET
    default_card_sort: CardSort | UnsetType | None = UNSET
    locale: Locale | UnsetType | None = UNSET
    timezone: TimeZone | UnsetType | None = UNSET


# -- outputs -------------------------------------------------------------------------------------


class Profile(msgspec.Struct, kw_only=True):
    """Who the caller is. ``id``/``email`` are None for identities without a user row (impersonation)."""

    kind: str
    subject: str
    id: int | None
    email: str | None
    display_name: str | None
    role: str
    permissions: list[str]


class User(msgspec.Struct, kw_only=True):
    id: int
    email: str
    role: str
    #: The per-user grants (true) and denials (false) on top of the role.
    permissions: dict[str, bool]
    effective_permissions: list[str]
    display_name: str | None
    disabled: bool
    #: Invited and not yet accepted (cannot log in until then).
    invited: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


class UserPage(msgspec.Struct, kw_only=True):
    items: list[User]
    next_cursor: str | None


class UserCreated(User, kw_only=True):
    """A new user; for an invitation also its one-time token (only in this response)."""

    invite_token: str | None = None
    invite_expires_at: datetime | None = None


class Session(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    source_address: str | None
    user_agent: str | None
    #: The session of the token that asked.
    current: bool


class ApiKey(msgspec.Struct, kw_only=True):
    id: int
    name: str
    #: The key's first characters, to recognise it by.
    prefix: str
    role: str
    created_by: int | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey, kw_only=True):
    #: The key itself (``Authorization: Bearer cvk_...``): shown only in this response.
    key: str


class TenantSettings(msgspec.Struct, kw_only=True):
    collection_name: str | None = None
    default_card_sort: str | None = None
    locale: str | None = None
    timezone: str | None = None
    updated_at: datetime | None = None
