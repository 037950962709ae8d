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
    #: Receives new tenants.
    ACTIVE = "active"
    #: Keeps its tenants, receives no new ones.
    DRAINING = "draining"


class Server(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    dsn_display: str
    status: ServerStatus
    template_revision: str | None
    tenants: int
    created_at: datetime


def validate_server_name(name: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME_PATTERN.fullmatch(name):
        raise ValidationFailed(
            "server name must be 1-63 characters of lowercase letters, digits, '_' and '-', starting with a letter",
            name=name,
        )
    return name
