"""Fleet types."""

from __future__ import annotations

import enum
import re
import uuid
from datetime import datetime

import msgspec

from controlplane.errors import ValidationFailed

SERVER_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

#: The server the control database lives on registers itself under this name.
DEFAULT_SERVER_NAME = "default"


class ServerStatus(enum.StrEnum):
    """What placement does with a server (``db_servers.status`` allows exactly these values)."""

    #: Receives new tenants.
    ACTIVE = "active"
    #: Keeps its tenants, receives no new ones.
    DRAINING = "draining"


class ServerIdentity(msgspec.Struct, frozen=True):
    """What a PostgreSQL server is, whatever host name reaches it: ``pg_control_system()``'s system
    identifier and the port the server itself listens on."""

    system_identifier: int
    port: int

    def describe(self) -> str:
        return f"system identifier {self.system_identifier}, port {self.port}"


class Server(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    dsn_display: str
    status: ServerStatus
    template_revision: str | None
    tenants: int
    created_at: datetime
    #: ``pg_control_system().system_identifier`` as a string (64 bits do not survive JSON numbers);
    #: None for a server registered before identities were recorded, until the reconciler records it.
    system_identifier: str | None = None
    #: The port the server listens on (its own ``port`` setting), with ``system_identifier``.
    port: int | None = None
    #: libpq ``sslmode`` of every connection to the server (None: libpq's default, ``prefer``).
    sslmode: str | None = None
    #: SHA-256 of the root certificate (PEM) the server's certificate is verified with, if one is set.
    root_cert_sha256: str | None = None

    @property
    def identity(self) -> ServerIdentity | None:
        if self.system_identifier is None or self.port is None:
            return None
        return ServerIdentity(int(self.system_identifier), self.port)


def validate_server_name(name: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME_PATTERN.fullmatch(name):
        raise ValidationFailed(
            "server name must be 1-63 characters of lowercase letters, digits, '_' and '-', starting with a letter",
            name=name,
        )
    return name
