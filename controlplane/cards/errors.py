"""Errors of the CardVault tenant API, each a ``CardVaultError`` with its HTTP status and stable code.

The one HTTP handler (``controlplane.http.errors``) turns them into ``{"error": code, "detail": ...,
**extra}``; the extras named below are part of the API contract.
"""

from __future__ import annotations

from typing import Any

from controlplane.errors import CardVaultError, Conflict, NotFound


class RowNotFound(NotFound):
    """No row with that id (extras: ``resource``, ``id``)."""

    code = "not_found"


class InvalidReference(CardVaultError):
    """A field references a row that does not exist (extras: ``field``, ``value``)."""

    status = 422
    code = "invalid_reference"


class ConstraintViolation(CardVaultError):
    """The database refused a value its checks do not allow (extra: ``constraint``)."""

    status = 422
    code = "constraint_violation"


class DuplicateRow(Conflict):
    """Another row already has that unique value (extra: ``constraint``)."""

    code = "conflict"


class RowInUse(Conflict):
    """The row is still referenced (e.g. a player with cards) and cannot be deleted (extra: ``referenced_by``)."""

    code = "in_use"


class QuotaExceeded(CardVaultError):
    """The tenant is at its limit (extras: ``quota``, ``limit``, ``usage``)."""

    status = 403
    code = "quota_exceeded"

    def __init__(self, detail: str, *, quota: str, limit: int, usage: int, **extra: Any) -> None:
        super().__init__(detail, quota=quota, limit=limit, usage=usage, **extra)
        self.quota = quota
        self.limit = limit
        self.usage = usage


class UnsupportedImage(CardVaultError):
    """Not a JPEG, PNG or WebP, or the declared Content-Type does not match the bytes."""

    status = 415
    code = "unsupported_media_type"


class ImageTooLarge(CardVaultError):
    """The upload is larger than ``max_image_bytes`` (extra: ``limit``)."""

    status = 413
    code = "payload_too_large"


class ImageMissing(CardVaultError):
    """The ``files`` row exists but the stored object is gone (an operator must restore it)."""

    status = 404
    code = "image_missing"
