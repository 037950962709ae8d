"""Errors of exports, downloads and erasures (codes in the README's list)."""

from __future__ import annotations

from controlplane.errors import CardVaultError, Conflict


class ExportInProgress(Conflict):
    """An export of the same kind (and user) is already pending or running for this tenant."""

    code = "export_in_progress"


class ExportNotReady(Conflict):
    """The export's archive is still being made; try the link again later."""

    code = "export_not_ready"


class ExportFailed(Conflict):
    """The export failed (its ``error`` says why); ask for a new one."""

    code = "export_failed"


class DownloadInProgress(Conflict):
    """The one download of this export is running right now."""

    code = "download_in_progress"


class ExportGone(CardVaultError):
    """The link was used already, or it expired: the archive is deleted."""

    status = 410
    code = "export_gone"
