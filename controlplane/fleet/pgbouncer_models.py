"""PgBouncer types: where one listens, what the registry keeps of it, what a sync did."""

from __future__ import annotations

import uuid
from typing import NamedTuple

import msgspec

from controlplane.errors import ValidationFailed

#: The PgBouncer admin user the control plane RELOADs as (``admin_users``; its verifier is in the auth file).
ADMIN_USER = "cardvault_pgbouncer"


class PgBouncerAddress(NamedTuple):
    """Where a PgBouncer listens (and so where tenant connections to its server go)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PgBouncerAddress:
        """``HOST:PORT`` (an IPv6 host in brackets: ``[::1]:6432``)."""
        host, sep, port = text.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or len(host) > 255:
            raise ValidationFailed(f"PgBouncer address must be HOST:PORT, got {text!r}", pgbouncer=text)
        if any(c.isspace() or c in "'\"=," for c in host):
            raise ValidationFailed(f"PgBouncer host {host!r} is not a host name or address", pgbouncer=text)
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class PgBouncerTenant(NamedTuple):
    """One tenant a PgBouncer serves: its database, its role and the role's password (encrypted)."""

    database_name: str
    role_name: str
    role_password_encrypted: str


class StoredPgBouncer(NamedTuple):
    """A ``server_pgbouncers`` row (with its server's name)."""

    server_id: uuid.UUID
    server_name: str
    address: PgBouncerAddress
    config_dir: str
    admin_password_encrypted: str


class PgBouncerSync(msgspec.Struct, kw_only=True):
    """What one sync did to one server's PgBouncer (CLI, admin API, logs)."""

    server: str
    address: str
    config_dir: str
    #: Tenant databases in the configuration.
    tenants: int
    #: The files changed and were rewritten (an unchanged configuration is neither written nor reloaded).
    written: bool
    #: PgBouncer accepted RELOAD.
    reloaded: bool
    #: Why the files could not be written or PgBouncer not reloaded (None: all went well).
    error: str | None = None
