"""Errors of the legacy import (each a ``CardVaultError``: the API and the CLI answer them the same way)."""

from __future__ import annotations

from controlplane.errors import CardVaultError, ValidationFailed


class InvalidLegacyFile(ValidationFailed):
    """The file is no SQLite database, or not one of a CardVault installation."""

    code = "invalid_legacy_file"


class InvalidArchive(ValidationFailed):
    """The uploads archive is no tar or zip, or holds paths that leave it (``../``, absolute, devices)."""

    code = "invalid_archive"


class ImportFailed(CardVaultError):
    """The tenant database refused the import; it was rolled back (nothing of it is left)."""

    status = 422
    code = "import_failed"
