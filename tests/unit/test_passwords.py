"""argon2id hashing off the event loop, the password rules (NIST 800-63B) and email normalisation."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.auth.passwords import Passwords, normalize_email, validate_password
from controlplane.errors import ValidationFailed
from controlplane.settings import AuthSettings

CHEAP = dataclasses.replace(AuthSettings(), argon2_memory_kib=64, argon2_time_cost=1)


@pytest.fixture
def passwords() -> Passwords:
    return Passwords(CHEAP)


async def test_hash_is_argon2id_with_the_configured_costs(passwords: Passwords) -> None:
    hashed = await passwords.hash("correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert await passwords.hash("correct horse battery") != hashed, "a fresh salt every time"


async def test_verify_round_trip_and_mismatch(passwords: Passwords) -> None:
    hashed = await passwords.hash("correct horse battery")
    assert await passwords.verify(hashed, "correct horse battery") is True
    assert await passwords.verify(hashed, "correct horse batterY") is False
    assert await passwords.verify(hashed, "") is False


@pytest.mark.parametrize(
    "stored",
    ["", "argon2$hash", "$argon2id$garbage", "$argon2id$v=19$m=64,t=1,p=1$AAAA$BBBB", "$2b$12$bcrypt-hash"],
)
async def test_verify_is_false_for_empty_or_invalid_hashes(passwords: Passwords, stored: str) -> None:
    assert await passwords.verify(stored, "correct horse battery") is False


async def test_verify_dummy_never_matches_and_is_reusable(passwords: Passwords) -> None:
    await passwords.verify_dummy("whatever password")
    first = passwords._dummy_hash
    await passwords.verify_dummy("cardvault-dummy-password")
    assert first is not None and passwords._dummy_hash == first, "the dummy hash is made once"


async def test_needs_rehash_when_costs_change(passwords: Passwords) -> None:
    hashed = await passwords.hash("correct horse battery")
    assert passwords.needs_rehash(hashed) is False
    stronger = Passwords(dataclasses.replace(CHEAP, argon2_memory_kib=128))
    assert stronger.needs_rehash(hashed) is True
    assert await stronger.verify(hashed, "correct horse battery"), "old hashes still verify"
    assert passwords.needs_rehash("") is False


@pytest.mark.parametrize("password", ["a" * 12, "ünïcödé pässwörd", " " * 12, "x" * 1024, "password1234"])
def test_acceptable_passwords(password: str) -> None:
    assert validate_password(password) == password


@pytest.mark.parametrize(
    ("password", "reason"),
    [("", "at least 12"), ("a" * 11, "at least 12"), ("x" * 1025, "at most 1024"), ("abcdefghijk\x00l", "NUL")],
)
def test_refused_passwords(password: str, reason: str) -> None:
    with pytest.raises(ValidationFailed, match=reason) as caught:
        validate_password(password)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("  Ann@Example.com ", "Ann@Example.com"), ("a@b", "a@b"), ("x+tag@sub.example.org", "x+tag@sub.example.org")],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "no-at-sign", "@example.com", "ann@", "a@b@c", "ann smith@example.com", "ann@exa\x00mple.com",
     "ann@\texample.com", "a" * 250 + "@b.co"],
)  # fmt: skip
def test_normalize_email_refuses(raw: str) -> None:
    with pytest.raises(ValidationFailed):
        normalize_email(raw)
