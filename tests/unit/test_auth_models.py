"""The permission matrix: role hierarchy, per-user overrides, and the README's table kept equal to the code."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from controlplane.auth.models import (
    ROLE_PERMISSIONS,
    TENANT_ROLES,
    Permission,
    Role,
    effective_permissions,
    parse_overrides,
    permission_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_roles_are_hierarchical() -> None:
    ranked = [Role.USER, Role.COLLECTION_MANAGER, Role.TENANT_ADMIN, Role.SUPER_ADMIN]
    for lower, higher in itertools.pairwise(ranked):
        assert ROLE_PERMISSIONS[lower] <= ROLE_PERMISSIONS[higher], (lower, higher)
        assert higher.at_least(lower) and not lower.at_least(higher)
    assert ROLE_PERMISSIONS[Role.SUPER_ADMIN] == frozenset(Permission)
    assert Role.SUPER_ADMIN not in TENANT_ROLES


def test_the_matrix_as_the_issue_states_it() -> None:
    user, manager, admin = (ROLE_PERMISSIONS[r] for r in (Role.USER, Role.COLLECTION_MANAGER, Role.TENANT_ADMIN))
    assert {Permission.CARDS_READ, Permission.CATALOG_READ, Permission.CARDS_WRITE_OWN} <= user
    assert Permission.CARDS_WRITE_ALL not in user and Permission.CATALOG_WRITE not in user
    assert {Permission.CARDS_WRITE_ALL, Permission.CATALOG_WRITE} <= manager
    assert Permission.USERS_MANAGE not in manager and Permission.SETTINGS_MANAGE not in manager
    assert {Permission.USERS_MANAGE, Permission.SETTINGS_MANAGE, Permission.AUDIT_READ} <= admin


def test_overrides_grant_and_deny_single_permissions() -> None:
    got = effective_permissions(Role.USER, {"catalog:write": True, "cards:write_own": False})
    assert Permission.CATALOG_WRITE in got and Permission.CARDS_WRITE_OWN not in got
    # Unknown or malformed stored entries are ignored rather than failing every request.
    assert effective_permissions(Role.USER, {"gone:perm": True, "catalog:write": "yes"}) == ROLE_PERMISSIONS[Role.USER]


@pytest.mark.parametrize(
    ("raw", "message"),
    [([], "object"), ({"nope": True}, "unknown permission"), ({"cards:read": 1}, "true .grant. or false")],
)
def test_overrides_are_validated_when_written(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(raw)


def test_readme_shows_the_matrix_of_the_code() -> None:
    match = re.search(r"<!-- permission-table -->\n(.*?)\n<!-- /permission-table -->", README.read_text(), re.S)
    assert match, "README.md lost its permission table markers"
    assert match[1].strip() == permission_table()
