"""What the routing layer hands to tenant API handlers."""

from __future__ import annotations

import uuid

import msgspec

from controlplane.registry.models import TenantStatus, Tier


class TenantContext(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant a request was resolved to (from the in-process registry cache)."""

    id: uuid.UUID
    slug: str
    status: TenantStatus
    tier: Tier
    server_id: uuid.UUID
    database_name: str
    role_name: str
