"""SecretBox (credentials at rest), tenant passwords and SCRAM-SHA-256 verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string

import pytest

from controlplane.crypto import (
    MIN_SECRET_KEY_LENGTH,
    TENANT_ROLE_SCRAM_ITERATIONS,
    KeyState,
    SecretBox,
    new_password,
    scram_sha256_verifier,
    tenant_role_verifier,
)
from controlplane.errors import ConfigError

KEY = "k" * MIN_SECRET_KEY_LENGTH
OLD_KEY = "o" * MIN_SECRET_KEY_LENGTH
OLDER_KEY = "p" * MIN_SECRET_KEY_LENGTH
VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


def test_secret_box_round_trips() -> None:
    box = SecretBox(KEY)
    for secret in ("pw", "host=db user=u password=p dbname=x", "ünïcødé ✓", ""):
        token = box.encrypt(secret)
        assert secret == box.decrypt(token)
        # A short plaintext turns up inside random base64 now and then (1 in ~100 runs for "pw"):
        # only long ones say anything about the ciphertext hiding them.
        assert len(secret) < 8 or secret not in token


def test_encryption_is_randomised_but_any_box_with_the_key_decrypts() -> None:
    first, second = SecretBox(KEY).encrypt("same"), SecretBox(KEY).encrypt("same")
    assert first != second
    assert SecretBox(KEY).decrypt(first) == SecretBox(KEY).decrypt(second) == "same"


def test_a_short_secret_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        SecretBox("k" * (MIN_SECRET_KEY_LENGTH - 1))
    with pytest.raises(ConfigError):
        SecretBox("")


def test_the_wrong_key_cannot_decrypt() -> None:
    token = SecretBox(KEY).encrypt("secret")
    with pytest.raises(ConfigError, match="wrong CARDVAULT_SECRET_KEY"):
        SecretBox("x" * MIN_SECRET_KEY_LENGTH).decrypt(token)


def test_a_tampered_token_cannot_be_decrypted() -> None:
    box = SecretBox(KEY)
    token = box.encrypt("secret")
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(ConfigError):
        box.decrypt(tampered)
    with pytest.raises(ConfigError):
        box.decrypt("not a token")


def test_during_a_rotation_the_previous_keys_still_decrypt_and_the_current_one_encrypts() -> None:
    old, older = SecretBox(OLD_KEY).encrypt("from old"), SecretBox(OLDER_KEY).encrypt("from older")
    box = SecretBox(KEY, [OLD_KEY, OLDER_KEY])
    assert box.previous_keys == 2
    assert box.decrypt(old) == "from old" and box.decrypt(older) == "from older"
    fresh = box.encrypt("new")
    assert SecretBox(KEY).decrypt(fresh) == "new", "new values need the current key only"
    with pytest.raises(ConfigError, match="CARDVAULT_SECRET_KEY_PREVIOUS"):
        SecretBox(OLD_KEY).decrypt(fresh)
    # The rotated-away key alone no longer opens anything written now; without it, old values are lost.
    with pytest.raises(ConfigError):
        SecretBox(KEY).decrypt(old)


def test_key_state_tells_current_previous_and_unreadable_values_apart() -> None:
    box = SecretBox(KEY, [OLD_KEY])
    assert box.state(box.encrypt("x")) is KeyState.CURRENT
    assert box.state(SecretBox(OLD_KEY).encrypt("x")) is KeyState.PREVIOUS
    assert box.state(SecretBox(OLDER_KEY).encrypt("x")) is KeyState.UNREADABLE
    assert box.state("not a token") is KeyState.UNREADABLE
    token = box.encrypt("x")
    assert box.state(token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]) is KeyState.UNREADABLE


def test_reencrypt_moves_a_previous_keys_value_to_the_current_key_and_leaves_current_ones() -> None:
    box = SecretBox(KEY, [OLD_KEY])
    old = SecretBox(OLD_KEY).encrypt("secret ✓")
    moved = box.reencrypt(old)
    assert moved is not None and moved != old
    assert SecretBox(KEY).decrypt(moved) == "secret ✓"
    assert box.reencrypt(moved) is None, "already under the current key: nothing to write"
    with pytest.raises(ConfigError):
        box.reencrypt(SecretBox(OLDER_KEY).encrypt("lost"))


def test_previous_keys_are_checked_and_the_current_key_among_them_is_ignored() -> None:
    with pytest.raises(ConfigError, match="CARDVAULT_SECRET_KEY_PREVIOUS"):
        SecretBox(KEY, ["short"])
    box = SecretBox(KEY, [KEY, OLD_KEY, OLD_KEY])
    assert box.previous_keys == 1
    assert box.state(box.encrypt("x")) is KeyState.CURRENT


def test_new_passwords_are_long_random_and_url_safe() -> None:
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50
    allowed = set(string.ascii_letters + string.digits + "-_")
    for password in passwords:
        assert len(password) >= 40
        assert set(password) <= allowed


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """StoredKey and ServerKey as RFC 5802 defines them."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return hashlib.sha256(client_key).digest(), hmac.digest(salted, b"Server Key", "sha256")


def test_scram_verifier_has_the_postgresql_format_and_matches_the_password() -> None:
    verifier = scram_sha256_verifier("correct horse")
    match = VERIFIER.fullmatch(verifier)
    assert match is not None, verifier
    iterations = int(match.group(1))
    salt, stored, server = (base64.b64decode(match.group(i)) for i in (2, 3, 4))
    assert iterations >= 4096 and len(salt) == 16 and len(stored) == len(server) == 32
    assert _keys("correct horse", salt, iterations) == (stored, server)
    assert _keys("wrong horse", salt, iterations) != (stored, server)
    assert "correct horse" not in verifier


def test_scram_verifiers_are_salted() -> None:
    first, second = scram_sha256_verifier("pw"), scram_sha256_verifier("pw")
    assert first != second
    first_match, second_match = VERIFIER.fullmatch(first), VERIFIER.fullmatch(second)
    assert first_match and second_match
    assert first_match.group(2) != second_match.group(2)


def test_tenant_role_verifiers_are_cheap_and_match_the_password() -> None:
    password = new_password()
    match = VERIFIER.fullmatch(tenant_role_verifier(password))
    assert match is not None
    iterations = int(match.group(1))
    assert iterations == TENANT_ROLE_SCRAM_ITERATIONS < 4096
    salt, stored, server = (base64.b64decode(match.group(i)) for i in (2, 3, 4))
    assert _keys(password, salt, iterations) == (stored, server)
    with pytest.raises(ValueError):
        scram_sha256_verifier(password, 0)
