"""The bootstrap admin guard: ``Authorization: Bearer <CARDVAULT_ADMIN_TOKEN>`` on ``/admin/*``."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from controlplane.errors import Unauthorized


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    expected: str = connection.app.state.admin_token
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("missing or invalid admin token (Authorization: Bearer <CARDVAULT_ADMIN_TOKEN>)")
