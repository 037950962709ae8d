"""Which tenant a request is for, and whether it may be served: the rules, free of HTTP types.

A tenant API request names its tenant in up to three ways:

- the path: ``/t/{slug}/api/...`` (the route's ``tenant_slug`` parameter);
- the subdomain: ``Host: {slug}.{base_domain}`` with ``/api/...``;
- the header: ``X-Tenant: {slug}`` with ``/api/...``.

Rules (``resolve_slug``):

- Empty or whitespace-only values count as absent. Host names are compared case-insensitively and
  without their port or trailing dot; path and header values are taken as given (slugs are lowercase,
  so ``ACME`` simply names no tenant).
- The Host gives a signal only for exactly one label in front of the base domain: the bare base domain,
  deeper subdomains (``a.b.{base}``), IP literals and unrelated hosts give none, and so do reserved
  words (``www``, ``api``, ``app``, ...: they are the platform's own hosts, so ``api.{base}`` with
  ``X-Tenant: acme`` is a request for ``acme``, not a conflict). No base domain configured: no signal.
- Two signals naming different tenants: 400 ``tenant_conflict``. The same tenant named twice is fine.
- No signal at all: 400 ``tenant_required``. (Chosen over 404: the client did not say which tenant it
  wants, which is a malformed request, not a missing resource; it also tells a misconfigured client
  exactly what is wrong.)

Then ``resolve`` looks the slug up (through the registry cache) and maps the tenant's status:
active -> served; suspended -> 423 ``tenant_suspended``; deleting -> 410 ``tenant_deleted``;
provisioning or broken -> 503 ``tenant_unavailable`` with ``retry_after``; unknown -> 404
``tenant_not_found``. A string no slug can match is answered 404 without a registry query.
"""

from __future__ import annotations

from typing import Protocol

from controlplane.context import TenantContext
from controlplane.registry.models import RESERVED_SLUGS, SLUG_PATTERN, TenantStatus
from controlplane.routing.errors import (
    TenantConflict,
    TenantDeleted,
    TenantNotFound,
    TenantRequired,
    TenantSuspended,
    TenantUnavailable,
)

#: Seconds a client is told to wait while its tenant is still being provisioned (takes milliseconds
#: to seconds) or is broken (needs an operator: no point in retrying soon).
RETRY_AFTER_PROVISIONING = 5
RETRY_AFTER_BROKEN = 60


class TenantLookup(Protocol):
    """What ``resolve`` needs: ``TenantCache`` is the implementation."""

    async def get_by_slug(self, slug: str) -> TenantContext | None: ...


def _hostname(value: str) -> str | None:
    """``value`` (a Host header or a configured domain) lowercased, without port and trailing dot.

    None for IP-v6 literals and for values that are not a plain host name with an optional port.
    """
    name = value.strip().lower()
    if not name or name.startswith("["):
        return None
    if ":" in name:
        name, _, port = name.partition(":")
        if not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def host_slug(host: str | None, base_domain: str | None) -> str | None:
    """The tenant a Host header names as ``{slug}.{base_domain}``; None when it names none."""
    if not host or not base_domain:
        return None
    base = _hostname(base_domain.lstrip("."))
    name = _hostname(host)
    if base is None or name is None:
        return None
    suffix = "." + base
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if not label or "." in label or label in RESERVED_SLUGS:
        return None
    return label


def resolve_slug(path_slug: str | None, host: str | None, header: str | None, base_domain: str | None) -> str:
    """The one slug the request's path, Host and ``X-Tenant`` header agree on.

    Raises ``TenantConflict`` when they name different tenants and ``TenantRequired`` when none does.
    """
    path = (path_slug or "").strip()
    subdomain = host_slug(host, base_domain) or ""
    named = (header or "").strip()
    if not (subdomain or named):  # the path alone, as most requests name their tenant
        if not path:
            raise TenantRequired(
                "name the tenant: /t/{slug}/api/..., the {slug}.<base domain> host, or an X-Tenant header"
            )
        return path
    signals = {"path": path, "subdomain": subdomain, "header": named}
    present = {source: value for source, value in signals.items() if value}
    slugs = set(present.values())
    if len(slugs) > 1:
        listed = ", ".join(f"{source} {value!r}" for source, value in present.items())
        raise TenantConflict(f"the request names more than one tenant: {listed}", signals=present)
    return slugs.pop()


async def resolve(cache: TenantLookup, slug: str) -> TenantContext:
    """The tenant ``slug`` names, if it may be served now; else the error saying why not."""
    # The registry's CHECK constraint is this pattern: anything else cannot exist, so no lookup.
    # fullmatch: match() would let 'acme\n' through ($ matches before a final newline).
    tenant = await cache.get_by_slug(slug) if SLUG_PATTERN.fullmatch(slug) else None
    return admit(tenant, slug)


def admit(tenant: TenantContext | None, slug: str) -> TenantContext:
    """``tenant`` if it is the one ``slug`` names and may be served now; else the error saying why not."""
    if tenant is None or tenant.slug != slug:
        raise TenantNotFound(f"no tenant {slug!r}", slug=slug)
    status = tenant.status
    if status is TenantStatus.ACTIVE:
        return tenant
    if status is TenantStatus.SUSPENDED:
        raise TenantSuspended(f"tenant {slug!r} is suspended", slug=slug)
    if status is TenantStatus.DELETING:
        raise TenantDeleted(f"tenant {slug!r} has been deleted", slug=slug)
    if status is TenantStatus.PROVISIONING:
        raise TenantUnavailable(
            f"tenant {slug!r} is being provisioned", retry_after=RETRY_AFTER_PROVISIONING, slug=slug
        )
    raise TenantUnavailable(
        f"tenant {slug!r} is unavailable ({status.value})", retry_after=RETRY_AFTER_BROKEN, slug=slug
    )
