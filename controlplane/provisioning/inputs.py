"""What a new tenant is created with: its display name (validated) and its first tenant_admin."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.crypto import SecretBox
from controlplane.errors import ValidationFailed


@dataclass(frozen=True)
class FirstAdmin:
    """The tenant_admin a new tenant is provisioned with (the password already hashed)."""

    email: str
    password_hash: str

    @classmethod
    def from_ledger(cls, params: Mapping[str, Any], box: SecretBox) -> FirstAdmin | None:
        seed = params.get("admin")
        if not isinstance(seed, Mapping):
            return None
        return cls(email=str(seed["email"]), password_hash=box.decrypt(str(seed["password_hash"])))


def validate_name(name: str) -> str:
    cleaned = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(cleaned) <= 200:
        raise ValidationFailed("name must be 1-200 characters")
    if any(unicodedata.category(char) == "Cc" for char in cleaned):  # NUL would reach PostgreSQL as a 500
        raise ValidationFailed("name must not contain control characters")
    return cleaned
