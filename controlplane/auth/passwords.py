"""Password hashing (argon2id) and the input rules for passwords and email addresses.

Hashing costs tens of milliseconds of CPU and ~19 MiB of memory by design, so it always runs in a worker
thread: the event loop keeps serving other requests meanwhile. A login for an unknown email, or for an
invited user who has no password yet (``password_hash = ''``), verifies against a dummy hash, so the
response time does not tell which emails exist.

Legacy bcrypt hashes (``$2a$``/``$2b$``/``$2y$``, from imported single-tenant installations) verify too,
and always need a rehash: the first successful sign-in replaces them with argon2id.

The password rules follow NIST SP 800-63B: a length range and nothing else (no composition rules).
"""

from __future__ import annotations

import asyncio
import unicodedata

import bcrypt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from controlplane.errors import ValidationFailed
from controlplane.settings import AuthSettings

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 254

_ARGON2_PREFIX = "$argon2"
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class Passwords:
    """argon2id hashing with the costs of ``AuthSettings``; every hash and verify runs off the event loop."""

    def __init__(self, settings: AuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=1,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        """The PHC string (``$argon2id$v=19$m=...``) of ``password`` with a fresh random salt."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches; False (never an exception) for a mismatch or an empty/invalid hash.

        An empty or unparsable hash still costs one dummy verification, so it is not told apart by timing.
        """
        if password_hash.startswith(_BCRYPT_PREFIXES):
            return await asyncio.to_thread(_verify_bcrypt, password_hash, password)
        if not password_hash.startswith(_ARGON2_PREFIX):
            await self.verify_dummy(password)
            return False
        return await asyncio.to_thread(self._verify, password_hash, password)

    async def verify_dummy(self, password: str) -> None:
        """Spend the time of one verification and learn nothing (a login for an unknown email)."""
        if self._dummy_hash is None:
            # Made once per instance; two concurrent first calls both make one, which is harmless.
            self._dummy_hash = await asyncio.to_thread(self._hasher.hash, "cardvault-dummy-password")
        await asyncio.to_thread(self._verify, self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a hash that just verified was made with other costs than the current ones.

        Only meaningful after a successful ``verify``; an invalid hash answers False; a bcrypt one True.
        """
        if password_hash.startswith(_BCRYPT_PREFIXES):
            return True
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return False

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError, ValueError):
            return False


def _verify_bcrypt(password_hash: str, password: str) -> bool:
    """A legacy bcrypt hash. bcrypt only ever read a password's first 72 bytes, so those are compared."""
    try:
        return bcrypt.checkpw(password.encode()[:72], password_hash.encode("ascii"))
    except ValueError:  # a malformed hash (or one that is not ASCII)
        return False


def validate_password(password: str) -> str:
    """``password`` if it is acceptable (12-1024 characters, no NUL); else ``ValidationFailed``."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationFailed(f"password must be at most {MAX_PASSWORD_LENGTH} characters long")
    if "\x00" in password:
        raise ValidationFailed("password must not contain NUL characters")
    return password


def normalize_email(email: str) -> str:
    """``email`` without surrounding whitespace, if it is plausible; else ``ValidationFailed``.

    Deliberately loose (one ``@`` with something on both sides, no whitespace or control characters,
    at most 254 characters): the only real check of an address is mail reaching it. Case is kept;
    uniqueness and look-ups are case-insensitive (``lower(email)``).
    """
    value = email.strip()
    if not value:
        raise ValidationFailed("email is required")
    if len(value) > MAX_EMAIL_LENGTH:
        raise ValidationFailed(f"email must be at most {MAX_EMAIL_LENGTH} characters long")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in value):
        raise ValidationFailed("email must not contain whitespace or control characters")
    local, sep, domain = value.partition("@")
    if not sep or not local or not domain or "@" in domain:
        raise ValidationFailed(f"not an email address: {value!r}")
    return value
