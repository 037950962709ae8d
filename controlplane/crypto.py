"""Secrets at rest and role passwords.

Every secret the control plane stores (tenant role passwords, server DSNs, token signing keys, the
data keys of backups and exports, ...) is encrypted with the master key: Fernet, its key derived from
``CARDVAULT_SECRET_KEY``. During a master-key rotation the earlier keys
(``CARDVAULT_SECRET_KEY_PREVIOUS``) still decrypt while ``cardvault keys rotate`` re-encrypts every stored
value under the current one; new values are always encrypted with the current key. Role passwords reach
PostgreSQL only as SCRAM-SHA-256 verifiers, so the plaintext never appears in a server log even with
``log_statement = 'all'``.

Tenant role verifiers use ``TENANT_ROLE_SCRAM_ITERATIONS`` PBKDF2 rounds, not PostgreSQL's 4096. The
iteration count is a work factor against guessing a password from its verifier (or from a recorded
SCRAM exchange); it protects human-chosen passwords. Tenant role passwords are 256 random bits
(``new_password``) that nobody types: no work factor makes guessing them any less hopeless, while
4096 rounds cost the client (the control plane, on its event loop) about 2 ms of CPU for every new
tenant connection, the most expensive part of opening one.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controlplane.errors import ConfigError

MIN_SECRET_KEY_LENGTH = 32
#: PostgreSQL's default SCRAM iteration count (``scram_iterations``), for passwords people choose.
DEFAULT_SCRAM_ITERATIONS = 4096
#: SCRAM iteration count of tenant login roles: their passwords are random 256-bit secrets (see above).
TENANT_ROLE_SCRAM_ITERATIONS = 16


class KeyState(enum.Enum):
    """Which master key a stored value is encrypted with."""

    #: The current key (``CARDVAULT_SECRET_KEY``).
    CURRENT = "current"
    #: One of the previous keys only: ``cardvault keys rotate`` re-encrypts it.
    PREVIOUS = "previous"
    #: None of the configured keys (a key that was removed too early, or a damaged value).
    UNREADABLE = "unreadable"


def _fernet(secret_key: str, setting: str) -> Fernet:
    if len(secret_key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(f"{setting} must be at least {MIN_SECRET_KEY_LENGTH} characters")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cardvault-secretbox", info=b"fernet-v1").derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


class SecretBox:
    """Encrypts short secrets with the current master key; decrypts with the current or a previous one.

    ``previous``: the keys a rotation is moving away from (``CARDVAULT_SECRET_KEY_PREVIOUS``), newest first;
    a previous key equal to the current one is ignored.
    """

    def __init__(self, secret_key: str, previous: Sequence[str] = ()) -> None:
        self._current = _fernet(secret_key, "CARDVAULT_SECRET_KEY")
        older = list(dict.fromkeys(key for key in previous if key != secret_key))
        self._previous = [_fernet(key, "every key of CARDVAULT_SECRET_KEY_PREVIOUS") for key in older]
        self._all = MultiFernet([self._current, *self._previous])

    @property
    def previous_keys(self) -> int:
        """How many previous keys still decrypt."""
        return len(self._previous)

    def encrypt(self, plaintext: str) -> str:
        return self._current.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._all.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "stored secret cannot be decrypted: wrong CARDVAULT_SECRET_KEY (or a previous key missing "
                "from CARDVAULT_SECRET_KEY_PREVIOUS)?"
            ) from None

    def state(self, token: str) -> KeyState:
        """Which key ``token`` is encrypted with (authenticated: a damaged token is ``UNREADABLE``)."""
        return self._open(token)[0]

    def reencrypt(self, token: str) -> str | None:
        """``token``'s plaintext encrypted with the current key, or None when it already is.

        ``ConfigError`` when no configured key decrypts it.
        """
        state, plaintext = self._open(token)
        if state is KeyState.UNREADABLE:
            raise ConfigError("stored secret cannot be decrypted with the current or a previous key")
        if state is KeyState.CURRENT:
            return None
        assert plaintext is not None
        return self._current.encrypt(plaintext).decode()

    def _open(self, token: str) -> tuple[KeyState, bytes | None]:
        raw = token.encode()
        with contextlib.suppress(InvalidToken):
            return KeyState.CURRENT, self._current.decrypt(raw)
        for fernet in self._previous:
            with contextlib.suppress(InvalidToken):
                return KeyState.PREVIOUS, fernet.decrypt(raw)
        return KeyState.UNREADABLE, None


def new_password() -> str:
    """A random password for a tenant login role."""
    return secrets.token_urlsafe(32)


def scram_sha256_verifier(password: str, iterations: int = DEFAULT_SCRAM_ITERATIONS, salt: bytes | None = None) -> str:
    """The ``SCRAM-SHA-256$...`` string PostgreSQL stores for ``password`` (RFC 5802/7677); a random salt
    unless one is given."""
    if iterations < 1:
        raise ValueError("the SCRAM iteration count must be >= 1")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def tenant_role_verifier(password: str) -> str:
    """The verifier of a tenant login role's password (a ``new_password()``): cheap to log in with.

    The same for the same password (its salt is derived from it): PgBouncer logs in to the server with
    the verifier of its auth file only when it is the server's own, salt included, and the control plane
    recomputes it from the stored password. A salt exists against precomputed guesses of human-chosen
    passwords; one derived from 256 random bits is as unique as a random one."""
    salt = hashlib.sha256(b"cardvault tenant role salt\0" + password.encode()).digest()[:16]
    return scram_sha256_verifier(password, TENANT_ROLE_SCRAM_ITERATIONS, salt)
