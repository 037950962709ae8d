"""Who may do what: roles, permissions, the permission matrix, and the authenticated ``Principal``.

The matrix is written once, here; the README's table is generated from it (``permission_table``) and
every tenant route names the one permission it needs (``opt={"permission": ...}``, checked by the
tenant API dependency; a test fails if a route names none).

Roles are hierarchical: each one has every permission of the roles below it. A user's ``permissions``
JSONB grants (``true``) or denies (``false``) single permissions on top of the role.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from controlplane.registry.models import Tier


class Role(enum.StrEnum):
    SUPER_ADMIN = "super_admin"  # platform; inside a tenant only through audited impersonation
    TENANT_ADMIN = "tenant_admin"
    COLLECTION_MANAGER = "collection_manager"
    USER = "user"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.USER: 1, Role.COLLECTION_MANAGER: 2, Role.TENANT_ADMIN: 3, Role.SUPER_ADMIN: 4}

#: Roles a tenant user or API key can have (super_admin lives in the control database only).
TENANT_ROLES = (Role.TENANT_ADMIN, Role.COLLECTION_MANAGER, Role.USER)


class Permission(enum.StrEnum):
    CARDS_READ = "cards:read"
    CARDS_WRITE_OWN = "cards:write_own"  # create cards; change and delete the cards one created
    CARDS_WRITE_ALL = "cards:write_all"  # change and delete any card
    CATALOG_READ = "catalog:read"  # players, teams, manufacturers
    CATALOG_WRITE = "catalog:write"
    SETTINGS_READ = "settings:read"
    SETTINGS_MANAGE = "settings:manage"
    USERS_READ = "users:read"
    USERS_MANAGE = "users:manage"  # create / invite, change role and permissions, disable
    API_KEYS_MANAGE = "api_keys:manage"
    AUDIT_READ = "audit:read"
    BILLING_MANAGE = "billing:manage"  # the plan, checkout, billing portal
    SELF = "self"  # one's own profile, password and sessions: every identity of the tenant


_USER = frozenset(
    {
        Permission.SELF,
        Permission.CARDS_READ,
        Permission.CARDS_WRITE_OWN,
        Permission.CATALOG_READ,
        Permission.SETTINGS_READ,
    }
)
_MANAGER = _USER | {Permission.CARDS_WRITE_ALL, Permission.CATALOG_WRITE}
_ADMIN = _MANAGER | {
    Permission.SETTINGS_MANAGE,
    Permission.USERS_READ,
    Permission.USERS_MANAGE,
    Permission.API_KEYS_MANAGE,
    Permission.AUDIT_READ,
    Permission.BILLING_MANAGE,
}

#: The permission matrix.
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.USER: _USER,
    Role.COLLECTION_MANAGER: _MANAGER,
    Role.TENANT_ADMIN: _ADMIN,
    Role.SUPER_ADMIN: frozenset(Permission),
}


def parse_overrides(raw: Any) -> dict[Permission, bool]:
    """The per-user ``permissions`` object, validated: permission name -> true (grant) / false (deny)."""
    if not isinstance(raw, Mapping):
        raise ValueError("permissions must be an object of permission name -> true/false")
    out: dict[Permission, bool] = {}
    for name, value in raw.items():
        try:
            permission = Permission(name)
        except ValueError:
            raise ValueError(f"unknown permission {name!r}; known: {', '.join(p.value for p in Permission)}") from None
        if not isinstance(value, bool):
            raise ValueError(f"permission {name!r} must be true (grant) or false (deny)")
        out[permission] = value
    return out


def effective_permissions(role: Role, overrides: Mapping[str, Any] | None = None) -> frozenset[Permission]:
    """The role's permissions with the user's grants added and denials removed.

    Stored overrides were validated when written; an unknown name in the database (e.g. a permission
    removed in a later version) is ignored rather than failing every request of that user.
    """
    granted = set(ROLE_PERMISSIONS[role])
    for name, value in (overrides or {}).items():
        if name in _PERMISSION_NAMES and isinstance(value, bool):
            (granted.add if value else granted.discard)(Permission(name))
    return frozenset(granted)


_PERMISSION_NAMES = frozenset(p.value for p in Permission)


class TenantRef(Protocol):
    """What authentication needs to know of the tenant a credential is checked against (a
    ``controlplane.context.TenantContext`` is one)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def tier(self) -> Tier: ...


class PrincipalKind(enum.StrEnum):
    USER = "user"  # a tenant user with a login session
    API_KEY = "api_key"
    IMPERSONATION = "impersonation"  # a super_admin acting inside a tenant
    PLATFORM_ADMIN = "platform_admin"
    AUTOMATION = "automation"  # the CARDVAULT_ADMIN_TOKEN


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated identity of a request."""

    kind: PrincipalKind
    #: Stable actor id for audit rows: ``user:12``, ``api_key:3``, ``admin:<uuid>``, ``automation``.
    subject: str
    #: Human label for audit rows: an email or a key name.
    label: str
    role: Role
    permissions: frozenset[Permission]
    tenant_id: uuid.UUID | None = None
    #: The tenant user (owner of the cards it creates); an API key acts as the user who made it.
    user_id: int | None = None
    session_id: uuid.UUID | None = None
    #: For impersonation, and for API keys made during one: the super_admin's id.
    impersonator: uuid.UUID | None = None
    #: The super_admin's login session the credential depends on (it ends with that session).
    impersonator_session: uuid.UUID | None = None
    #: When the credential stops working (impersonation tokens; API keys with an expiry), if known.
    expires_at: dt.datetime | None = None

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


def permission_table() -> str:
    """The permission matrix as a Markdown table (what the README shows)."""
    roles = (Role.USER, Role.COLLECTION_MANAGER, Role.TENANT_ADMIN)
    lines = ["| permission | " + " | ".join(r.value for r in roles) + " |", "|---|" + "---|" * len(roles)]
    for permission in Permission:
        marks = " | ".join("yes" if permission in ROLE_PERMISSIONS[r] else "-" for r in roles)
        lines.append(f"| `{permission.value}` | {marks} |")
    return "\n".join(lines)
