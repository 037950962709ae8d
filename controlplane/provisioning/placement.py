"""Where a new tenant goes: the active server with the fewest tenants that is not full.

Full is ``controlplane.usage.fill``'s definition (``CARDVAULT_SERVER_MAX_TENANTS`` reached, or projected
bytes at ``CARDVAULT_SERVER_FULL_RATIO`` of ``CARDVAULT_SERVER_CAPACITY_BYTES``); draining servers take no
tenants anyway. With neither limit set (the default) this is ``FleetService.place`` as it was: no fill is
computed. Every active server full: 503 ``no_server_available``, naming why.
"""

from __future__ import annotations

from controlplane.db import AsyncConn
from controlplane.fleet.models import Server, ServerStatus
from controlplane.platform import Platform
from controlplane.usage.fill import FillPolicy, fleet_fill


async def place(platform: Platform, conn: AsyncConn) -> Server:
    """The server a new tenant is created on (it answered a ping)."""
    policy = FillPolicy.of(platform.settings.moves)
    if not policy.max_tenants and not policy.limits_bytes:
        return await platform.fleet.place(conn)
    full = [f for f in await fleet_fill(conn, policy) if f.status is ServerStatus.ACTIVE and f.full]
    why = "; ".join(f"{f.name} {', '.join(f.full_reasons)}" for f in full)
    return await platform.fleet.place(conn, avoid={f.id for f in full}, why=why)
