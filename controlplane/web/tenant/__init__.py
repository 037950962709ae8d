"""The tenant app's pages (``/t/{slug}`` and ``/`` on the tenant's subdomain): each module exports its
handlers. ``FINDER_HANDLERS`` are the workspace finder (``/workspaces``, not inside any tenant);
``PUBLIC_HANDLERS`` are reachable signed out (sign-in, single sign-on); ``PAGE_HANDLERS`` go through the
tenant API's authentication and each names the permission it needs."""

from __future__ import annotations

from typing import Any

from controlplane.web.tenant import auth, billing, cards, catalog, data, finder, sso, usage, users

FINDER_HANDLERS: list[Any] = [*finder.HANDLERS]
PUBLIC_HANDLERS: list[Any] = [*auth.PUBLIC_HANDLERS, *sso.HANDLERS]
PAGE_HANDLERS: list[Any] = [
    *auth.HANDLERS,
    *cards.HANDLERS,
    *catalog.HANDLERS,
    *users.HANDLERS,
    *usage.HANDLERS,
    *billing.HANDLERS,
    *data.HANDLERS,
]
