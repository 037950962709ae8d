"""What a legacy import reports: what it took, how ids were kept, and everything it could not take.

The report is the answer of ``POST /admin/tenants/{slug}/import`` and what ``cardvault import-sqlite``
prints (``--json``: the same structure). Issues are listed per kind up to ``ISSUES_PER_KIND`` (the
counts in ``issue_counts`` are always complete), so a dirty 100,000-card file still gives a readable
answer.
"""

from __future__ import annotations

import enum

import msgspec

#: Issues listed per kind; the rest are only counted (``issue_counts``, ``issues_omitted``).
ISSUES_PER_KIND = 1000


class IssueKind(enum.StrEnum):
    """Everything the import could not take as it was, and what it did instead."""

    #: A reference to a row that does not exist (or is not an id at all): imported as NULL.
    ORPHAN_REFERENCE = "orphan_reference"
    #: A year that is not a four-digit year in 1860-2100 ('1996a', '', '96', 1700): imported as NULL.
    BAD_YEAR = "bad_year"
    #: A condition not on the grading scale ('damaged', '7'): imported as NULL.
    BAD_CONDITION = "bad_condition"
    #: A combined grade between two grades ('EX-MT', 'NM-MT'): imported as the lower one.
    CONDITION_ROUNDED_DOWN = "condition_rounded_down"
    #: A date that cannot be read unambiguously: the import time (or the card's created_at) instead.
    BAD_DATE = "bad_date"
    #: A user whose email equals (ignoring case) a later user's: not imported, merged into that one.
    DUPLICATE_EMAIL = "duplicate_email"
    #: A user whose email is already a user of the tenant: merged into the existing account.
    EXISTING_USER = "existing_user"
    #: A user without a usable email: the username when it is one, else a disabled placeholder account.
    MISSING_EMAIL = "missing_email"
    #: A role other than admin / editor / user: imported as user.
    UNKNOWN_ROLE = "unknown_role"
    #: A password hash that cannot be verified safely (sha256, unknown): the user must set a new one.
    PASSWORD_RESET = "password_reset"
    #: An image path whose file is not in the uploads folder (or no folder was given).
    MISSING_IMAGE = "missing_image"
    #: An image file that is not JPEG/PNG/WebP, is too large, or whose path leaves the uploads folder.
    BAD_IMAGE = "bad_image"
    #: A manufacturer or team that already exists (same name): merged, references follow.
    DUPLICATE_NAME = "duplicate_name"
    #: Text with NUL characters (PostgreSQL text cannot hold them): removed.
    TEXT_CLEANED = "text_cleaned"


class ImportIssue(msgspec.Struct, kw_only=True, omit_defaults=True):
    kind: IssueKind
    table: str
    #: The row's id in the legacy file.
    legacy_id: int | None = None
    field: str | None = None
    #: The value as the legacy file has it (shortened).
    value: str | None = None
    detail: str = ""


class PasswordReset(msgspec.Struct, kw_only=True):
    """A user who must choose a new password: resend their invitation (``POST /users/{id}/invitation``)."""

    legacy_id: int
    user_id: int
    email: str
    reason: str


class ImportReport(msgspec.Struct, kw_only=True):
    tenant: str
    dry_run: bool
    #: Per table: ``kept`` (legacy ids, the table was empty) or ``mapped`` (new ids).
    ids: dict[str, str]
    #: Rows written per table (``images``: files copied into the tenant's storage).
    imported: dict[str, int]
    #: Legacy users merged into another account (duplicates, existing users), by kind.
    merged: dict[str, int]
    image_bytes: int
    password_resets: list[PasswordReset]
    issue_counts: dict[str, int]
    issues: list[ImportIssue]
    #: Issues counted but not listed (more than ``ISSUES_PER_KIND`` of one kind).
    issues_omitted: int
    seconds: float


class Issues:
    """Collects issues: counts every one, keeps the first ``ISSUES_PER_KIND`` of each kind."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.listed: list[ImportIssue] = []

    def add(
        self,
        kind: IssueKind,
        table: str,
        legacy_id: int | None = None,
        *,
        field: str | None = None,
        value: object = None,
        detail: str = "",
    ) -> None:
        count = self.counts.get(kind.value, 0) + 1
        self.counts[kind.value] = count
        if count <= ISSUES_PER_KIND:
            shown = None if value is None else repr(value) if not isinstance(value, str) else value
            self.listed.append(
                ImportIssue(
                    kind=kind,
                    table=table,
                    legacy_id=legacy_id,
                    field=field,
                    value=None if shown is None else shown[:200],
                    detail=detail,
                )
            )

    @property
    def omitted(self) -> int:
        return sum(self.counts.values()) - len(self.listed)

    def count(self, kind: IssueKind) -> int:
        return self.counts.get(kind.value, 0)
