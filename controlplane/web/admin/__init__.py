"""The super-admin dashboard's pages (``/admin/ui``): each module exports its handlers; ``PUBLIC_HANDLERS``
are reachable signed out (the sign-in form), ``PAGE_HANDLERS`` sit behind ``admin_guard``."""

from __future__ import annotations

from typing import Any

from controlplane.web.admin import alerts, auth, fleet, overview, tenant_actions, tenant_detail, tenants

PUBLIC_HANDLERS: list[Any] = [*auth.PUBLIC_HANDLERS]
PAGE_HANDLERS: list[Any] = [
    *auth.HANDLERS,
    *overview.HANDLERS,
    *tenants.HANDLERS,
    *tenant_detail.HANDLERS,
    *tenant_actions.HANDLERS,
    *fleet.HANDLERS,
    *alerts.HANDLERS,
]
