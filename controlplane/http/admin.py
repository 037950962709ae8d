"""The guard of ``/admin/*``: a super-admin's access JWT, or the automation token.

- ``Authorization: Bearer <JWT>`` with ``aud`` platform and role super_admin, whose login session is
  live and whose account is enabled (one control-database read: the admin API is not a hot path,
  and a revoked session or disabled admin must lose access at once).
- ``Authorization: Bearer <CARDVAULT_ADMIN_TOKEN>``, the documented credential for automation. Only
  its SHA-256 is kept in memory; it acts as ``automation`` in the platform audit.

The principal is left in the request's state for handlers that audit (``admin_principal``).
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from controlplane.auth import repository as admins
from controlplane.auth import session_repository as sessions
from controlplane.auth.models import ROLE_PERMISSIONS, Principal, PrincipalKind, Role
from controlplane.auth.service import PLATFORM_AUDIENCE, Authenticator, automation_token_matches, bearer, subject_id
from controlplane.context import AuditContext
from controlplane.errors import InvalidToken, WrongTenant
from controlplane.http.context import request_id, source_address
from controlplane.http.state import ADMIN_TOKEN_HASH_STATE_KEY, AUTH_STATE_KEY, PLATFORM_STATE_KEY
from controlplane.platform import Platform

_PRINCIPAL_KEY = "cardvault.principal"


async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    state = connection.app.state
    token = bearer(connection.headers.get("authorization"))
    if automation_token_matches(token, state.get(ADMIN_TOKEN_HASH_STATE_KEY)):
        principal = Principal(
            kind=PrincipalKind.AUTOMATION,
            subject="automation",
            label="CARDVAULT_ADMIN_TOKEN",
            role=Role.SUPER_ADMIN,
            permissions=ROLE_PERMISSIONS[Role.SUPER_ADMIN],
        )
    else:
        auth: Authenticator = state[AUTH_STATE_KEY]
        claims = await auth.signer.verify(token)
        if claims.aud != PLATFORM_AUDIENCE or claims.role != Role.SUPER_ADMIN.value:
            raise WrongTenant("a tenant token cannot use the platform API")
        admin_id = subject_id(claims, "admin")
        platform: Platform = state[PLATFORM_STATE_KEY]
        async with platform.control.connection() as conn:
            admin = await admins.get_admin(conn, admin_id)
            live = claims.sid is not None and await sessions.is_active(conn, "platform_sessions", uuid.UUID(claims.sid))
        if admin is None or admin.disabled or not live or claims.sid is None:
            raise InvalidToken("the session has ended or the account is disabled; log in again")
        principal = Principal(
            kind=PrincipalKind.PLATFORM_ADMIN,
            subject=f"admin:{admin.id}",
            label=admin.email,
            role=Role.SUPER_ADMIN,
            permissions=ROLE_PERMISSIONS[Role.SUPER_ADMIN],
            session_id=uuid.UUID(claims.sid),  # impersonation tokens it makes end with this session
        )
    connection.scope.setdefault("state", {})[_PRINCIPAL_KEY] = principal


def admin_principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal: Principal = connection.scope["state"][_PRINCIPAL_KEY]
    return principal


def admin_audit_context(connection: ASGIConnection[Any, Any, Any, Any]) -> AuditContext:
    """Who did a platform action, for ``platform_audit``."""
    principal = admin_principal(connection)
    return AuditContext(
        actor=principal.subject,
        actor_label=principal.label,
        source_address=source_address(connection.scope),
        request_id=request_id(connection.scope),
    )
