"""Secrets at rest and role passwords.

Tenant role passwords and server DSNs are stored encrypted (Fernet, key derived from
``CARDVAULT_SECRET_KEY``). Role passwords reach PostgreSQL only as SCRAM-SHA-256 verifiers, so the
plaintext never appears in a server log even with ``log_statement = 'all'``.

Tenant role verifiers use ``TENANT_ROLE_SCRAM_ITERATIONS`` PBKDF2 rounds, not PostgreSQL's 4096. The
iteration count is a work factor against guessing a password from its verifier (or from a recorded
SCRAM exchange); it protects human-chosen passwords. Tenant role passwords are 256 random bits
(``new_password``) that nobody types: no work factor makes guessing them any less hopeless, while
4096 rounds cost the client (the control plane, on its event loop) about 2 ms of CPU for every new
tenant connection, the most expensive part of opening one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controlplane.errors import ConfigError

MIN_SECRET_KEY_LENGTH = 32
#: PostgreSQL's default SCRAM iteration count (``scram_iterations``), for passwords people choose.
DEFAULT_SCRAM_ITERATIONS = 4096
#: SCRAM iteration count of tenant login roles: their passwords are random 256-bit secrets (see above).
TENANT_ROLE_SCRAM_ITERATIONS = 16


class SecretBox:
    """Encrypts and decrypts short secrets with a key derived from the service secret."""

    def __init__(self, secret_key: str) -> None:
        if len(secret_key) < MIN_SECRET_KEY_LENGTH:
            raise ConfigError(f"CARDVAULT_SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cardvault-secretbox", info=b"fernet-v1").derive(
            secret_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError("stored secret cannot be decrypted: wrong CARDVAULT_SECRET_KEY?") from None


def new_password() -> str:
    """A random password for a tenant login role."""
    return secrets.token_urlsafe(32)


def scram_sha256_verifier(password: str, iterations: int = DEFAULT_SCRAM_ITERATIONS) -> str:
    """The ``SCRAM-SHA-256$...`` string PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    if iterations < 1:
        raise ValueError("the SCRAM iteration count must be >= 1")
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def tenant_role_verifier(password: str) -> str:
    """The verifier of a tenant login role's password (a ``new_password()``): cheap to log in with."""
    return scram_sha256_verifier(password, TENANT_ROLE_SCRAM_ITERATIONS)
