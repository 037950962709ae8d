"""Who acted, from where, under which request: what every audit row carries besides the action."""

from __future__ import annotations

import ipaddress

import msgspec


def client_address(host: str | None) -> str | None:
    """``host`` if it is an IP address (what an ``inet`` column can hold), else None."""
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class AuditContext(msgspec.Struct, frozen=True, kw_only=True):
    """The request an audited action belongs to."""

    #: Stable actor id (``user:12``, ``api_key:3``, ``admin:<uuid>``, ``automation``, ``cli:<os user>``).
    actor: str
    #: Human label (email, key name) kept in the row's details.
    actor_label: str = ""
    #: For impersonation: ``admin:<uuid>`` of the super_admin behind the actor.
    impersonator: str | None = None
    source_address: str | None = None
    request_id: str | None = None
