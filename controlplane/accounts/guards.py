"""The rules that keep user management safe: what an actor may hand out, and that a tenant always keeps
an admin who can manage its users.

Pure functions over the actor (``Principal``) and user rows; ``service.Accounts`` reads and locks the
rows (``repository.lock_user_managers``) and calls these before it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.accounts.errors import LastAdmin
from controlplane.auth.models import Permission, Principal, PrincipalKind, Role, effective_permissions
from controlplane.errors import PermissionDenied

#: User rows by id, as ``repository.lock_user_managers`` returns them (``tenant_role``, ``permissions``).
Managers = Mapping[int, Mapping[str, Any]]


def manages_users(role: Role, overrides: Mapping[str, Any] | None, *, disabled: bool = False) -> bool:
    """A tenant_admin who can act on every user: enabled and holding ``users:manage``.

    A collection_manager granted ``users:manage`` does not count: it can never change an admin, so it
    could not give user management back to one.
    """
    return (
        not disabled and role is Role.TENANT_ADMIN and Permission.USERS_MANAGE in effective_permissions(role, overrides)
    )


def check_grantable(principal: Principal, role: Role | None, overrides: Mapping[Permission, bool]) -> None:
    """Refuse handing out a role above the actor's own, or a permission the actor does not hold."""
    if role is not None and role.rank > principal.role.rank:
        raise PermissionDenied(
            f"a {principal.role.value} cannot give the role {role.value}", permission=Permission.USERS_MANAGE.value
        )
    beyond = sorted(p.value for p, granted in overrides.items() if granted and not principal.can(p))
    if beyond:
        raise PermissionDenied(
            f"cannot grant permissions you do not hold: {', '.join(beyond)}",
            permission=Permission.USERS_MANAGE.value,
        )


def keep_a_user_manager(user_id: int, managers: Managers, still_able: bool) -> None:
    """Refuse a change after which user ``user_id`` no longer ``still_able`` to manage users, if it is
    the last enabled tenant_admin holding ``users:manage`` among the (locked) ``managers``."""
    able = [uid for uid, row in managers.items() if manages_users(Role(row["tenant_role"]), row["permissions"])]
    if user_id in able and len(able) <= 1 and not still_able:
        raise LastAdmin("this is the tenant's last tenant_admin who can manage users; make another one first")


def check_actor_unchanged(principal: Principal, managers: Managers) -> None:
    """Refuse if the acting user's role or permissions (as read under the lock) are no longer those the
    request was authorised with: a concurrent change, or a principal another instance still caches.

    Whoever may manage users is among ``managers``; an actor missing from it has lost that right.
    """
    if principal.kind is not PrincipalKind.USER or principal.user_id is None:
        return
    row = managers.get(principal.user_id)
    if row is None or (
        Role(row["tenant_role"]) is not principal.role
        or effective_permissions(Role(row["tenant_role"]), row["permissions"]) != principal.permissions
    ):
        raise PermissionDenied(
            "your role or permissions changed while this request ran; retry", permission=Permission.USERS_MANAGE.value
        )
