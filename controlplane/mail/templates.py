"""The texts of the mails the service sends (plain text; links built from ``CARDVAULT_PUBLIC_URL``).

Each template returns ``(subject, body)``. Tokens go into links URL-encoded; nothing a user typed goes
into a header except through the ``email`` package, which refuses line breaks.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote, urlencode


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def verification_link(base_url: str, token: str) -> str:
    """``{base_url}/signup/verify?token=...``: the link in the verification mail."""
    return f"{base_url}/signup/verify?{urlencode({'token': token})}"


def invitation_link(base_url: str, slug: str, token: str) -> str:
    """``{base_url}/t/{slug}/invitations/accept?token=...``: the link in an invitation mail."""
    return f"{base_url}/t/{quote(slug, safe='')}/invitations/accept?{urlencode({'token': token})}"


def verification(*, base_url: str, organisation: str, slug: str, token: str, expires_at: datetime) -> tuple[str, str]:
    subject = "Confirm your email address for CardVault"
    body = (
        f"Welcome to CardVault!\n\n"
        f"You signed up {organisation} (workspace '{slug}'). Please confirm that this address is yours by\n"
        f"opening this link:\n\n"
        f"    {verification_link(base_url, token)}\n\n"
        f"The link works until {_when(expires_at)}. If you did not sign up, ignore this mail.\n"
    )
    return subject, body


def invitation(*, base_url: str, slug: str, role: str, token: str, expires_at: datetime) -> tuple[str, str]:
    subject = f"You are invited to the CardVault workspace {slug}"
    body = (
        f"You have been invited to join the CardVault workspace '{slug}' as {role.replace('_', ' ')}.\n\n"
        f"Choose your password here:\n\n"
        f"    {invitation_link(base_url, slug, token)}\n\n"
        f"(or POST the token to {base_url}/t/{quote(slug, safe='')}/auth/invitations/accept as\n"
        f'{{"invite_token": "<token>", "password": "<your password>"}}).\n\n'
        f"The invitation works until {_when(expires_at)}. If you did not expect it, ignore this mail.\n"
    )
    return subject, body
