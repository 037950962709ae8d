"""Impersonation: a super-admin acting inside a tenant, as one of its roles, for a short while.

Only a person may impersonate (a super-admin's own login, never the automation token): everything done
with the token is attributed in the tenant's audit trail to the admin behind it. The token lasts
``CARDVAULT_IMPERSONATION_TTL`` at most and ends with the admin's login session (``Authenticator``
checks that session on every request). ``start`` checks and issues; the caller records the start in the
tenant's own ``audit_log`` before it hands the token out (no row, no token), as it records logins.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from controlplane.auth.logins import Logins, TokenPair
from controlplane.auth.models import TENANT_ROLES, Principal, PrincipalKind, Role, TenantRef
from controlplane.errors import PermissionDenied, ValidationFailed


class Impersonation(msgspec.Struct, frozen=True, kw_only=True):
    """A started impersonation: the token to hand out, and what the tenant's audit row says of it."""

    pair: TokenPair
    details: dict[str, Any]


def check_impersonator(principal: Principal) -> uuid.UUID:
    """The super-admin's id if ``principal`` may impersonate; else ``PermissionDenied``.

    Only a person may: everything done with the token is attributed in the tenant's audit trail to
    the admin behind it, and the automation token (``CARDVAULT_ADMIN_TOKEN``) names nobody.
    """
    kind, _, raw_id = principal.subject.partition(":")
    if principal.kind is not PrincipalKind.PLATFORM_ADMIN or kind != "admin":
        raise PermissionDenied(
            "impersonation needs a super-admin's own login (POST /auth/token): what is done with the token "
            "is attributed to that person in the tenant's audit trail, and the automation token names nobody",
            permission="impersonate",
        )
    return uuid.UUID(raw_id)


def start(logins: Logins, tenant: TenantRef, principal: Principal, *, role: Role, reason: str) -> Impersonation:
    """A short-lived tenant token for a super-admin acting as ``role`` inside ``tenant`` (active).

    The token ends with the admin's login session. Record ``details`` (``impersonation.start``) in the
    tenant's ``audit_log`` before handing ``pair`` out.
    """
    admin_id = check_impersonator(principal)
    reason = reason.strip()
    if not 3 <= len(reason) <= 500:
        raise ValidationFailed("reason must be 3..500 characters (not counting surrounding spaces)")
    if role not in TENANT_ROLES:
        raise ValidationFailed("role must be one of the tenant roles", role=role.value)
    if principal.session_id is None:
        raise PermissionDenied("impersonation needs a super-admin's login session", permission="impersonate")
    pair = logins.impersonation_token(tenant, admin_id, role, principal.session_id)  # ends with that session
    return Impersonation(pair=pair, details={"reason": reason, "role": role.value, "expires_in": pair.expires_in})
