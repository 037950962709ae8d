"""Access tokens: HS256 only, strict claims, key ids, one rate-limited reload for an unknown key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from controlplane.auth.tokens import AccessClaims, KeyRing, TokenSigner
from controlplane.errors import InvalidToken

KEY_A = b"a" * 32
KEY_B = b"b" * 32


def signer(keys: dict[str, bytes] | None = None, current: str = "ka", **kwargs: Any) -> TokenSigner:
    return TokenSigner(KeyRing(keys or {"ka": KEY_A}, current), **kwargs)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "cardvault",
        "aud": "tenant",
        "sub": "user:1",
        "role": "user",
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: bytes = KEY_A, kid: str | None = "ka", algorithm: str = "HS256") -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None = KEY_A) -> str:
    """A token assembled by hand: HMAC-SHA256 signature with ``key``, or an empty one."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(hmac.digest(key, signing_input.encode(), hashlib.sha256)) if key else ""
    return f"{signing_input}.{signature}"


async def refused(s: TokenSigner, token: str, detail: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        await s.verify(token)
    assert detail in caught.value.detail, caught.value.detail
    assert caught.value.status == 401


async def test_round_trip_with_every_claim() -> None:
    s = signer()
    tenant, session, admin = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    token = s.issue(
        audience="tenant",
        subject="user:7",
        role="tenant_admin",
        ttl=900,
        tenant_id=tenant,
        session_id=session,
        impersonator=admin,
    )
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "kid": "ka", "typ": "JWT"}
    got = await s.verify(token)
    assert isinstance(got, AccessClaims)
    assert (got.iss, got.aud, got.sub, got.role) == ("cardvault", "tenant", "user:7", "tenant_admin")
    assert (got.tid, got.sid, got.imp) == (tenant, str(session), str(admin))
    assert got.exp - got.iat == 900 and abs(got.iat - time.time()) < 5
    assert got.jti and got.jti != (await s.verify(s.issue(audience="tenant", subject="u", role="user", ttl=60))).jti


async def test_platform_token_has_no_tenant_claims() -> None:
    s = signer()
    got = await s.verify(s.issue(audience="platform", subject="admin:x", role="super_admin", ttl=60))
    assert got.aud == "platform" and got.tid is None and got.sid is None and got.imp is None


def test_unknown_audience_is_not_issued() -> None:
    with pytest.raises(ValueError):
        signer().issue(audience="other", subject="u", role="user", ttl=60)


async def test_expired_token() -> None:
    s = signer()
    await refused(s, s.issue(audience="tenant", subject="u", role="user", ttl=-1), "token expired")
    await refused(s, sign(claims(exp=int(time.time()))), "token expired")  # no leeway


async def test_wrong_key() -> None:
    s = signer()
    await refused(s, sign(claims(), key=KEY_B), "invalid token signature")


async def test_tampered_payload() -> None:
    s = signer()
    token = s.issue(audience="tenant", subject="user:1", role="user", ttl=60)
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["role"] = "tenant_admin"
    forged = f"{header}.{b64(json.dumps(body).encode())}.{signature}"
    await refused(s, forged, "invalid token signature")


async def test_alg_none_is_refused() -> None:
    s = signer()
    await refused(s, handmade({"alg": "none", "kid": "ka"}, claims(), key=None), "unsupported token algorithm")
    await refused(s, handmade({"alg": "None", "kid": "ka"}, claims(), key=None), "unsupported token algorithm")


@pytest.mark.parametrize("alg", ["HS512", "HS384", "RS256", "ES256", "PS256", "EdDSA"])
async def test_other_algorithms_are_refused(alg: str) -> None:
    s = signer()
    # Whatever the signature, a header naming another algorithm is never accepted (no key confusion).
    await refused(s, handmade({"alg": alg, "kid": "ka", "typ": "JWT"}, claims()), "unsupported token algorithm")
    if alg.startswith("HS"):
        # (a 64-byte key: PyJWT warns about shorter HS384/HS512 keys)
        await refused(s, sign(claims(), key=KEY_A * 2, algorithm=alg), "unsupported token algorithm")


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "role", "iat", "exp", "jti"])
async def test_missing_claims(claim: str) -> None:
    s = signer()
    payload = claims()
    del payload[claim]
    await refused(s, sign(payload), claim)


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"iss": "someone-else"}, "invalid token issuer"),
        ({"aud": "billing"}, "invalid token audience"),
        ({"aud": ["tenant", "platform"]}, "invalid token claims"),
        ({"sub": 12}, "malformed token"),
        ({"sub": ""}, "invalid token claims"),
        ({"role": 5}, "invalid token claims"),
        ({"exp": lambda now: str(now + 600)}, "invalid token claims"),
        ({"exp": "soon"}, "malformed token"),
        ({"iat": lambda now: now + 86400}, "issued in the future"),
        ({"tid": 42}, "invalid token claims"),
        ({"tid": "acme"}, "invalid token claims"),
        ({"sid": ["x"]}, "invalid token claims"),
    ],
)
async def test_claims_of_the_wrong_kind(overrides: dict[str, Any], detail: str) -> None:
    # Clock-relative values are functions of the time the test runs, never of collection time.
    now = int(time.time())
    resolved = {name: value(now) if callable(value) else value for name, value in overrides.items()}
    await refused(signer(), sign(claims(**resolved)), detail)


async def test_small_clock_skew_on_iat_is_tolerated() -> None:
    got = await signer().verify(sign(claims(iat=int(time.time()) + 3)))
    assert got.sub == "user:1"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "a.b.c.d", "🙂.🙂.🙂", "eyJhbGciOiJIUzI1NiJ9.e30", "....", "x" * 5000]
)
async def test_malformed_tokens(token: str) -> None:
    with pytest.raises(InvalidToken):
        await signer().verify(token)


async def test_missing_or_non_string_kid() -> None:
    s = signer()
    await refused(s, sign(claims(), kid=None), "no key id")
    await refused(s, handmade({"alg": "HS256", "kid": 7}, claims()), "malformed token")


async def test_unknown_kid_without_reloader_fails() -> None:
    await refused(signer(), sign(claims(), key=KEY_B, kid="kb"), "unknown token signing key")


async def test_unknown_kid_reloads_once_and_then_verifies() -> None:
    s = signer()
    calls = 0

    async def reload() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # concurrent verifications wait for this one reload
        s.ring = KeyRing({"ka": KEY_A, "kb": KEY_B}, "kb")

    s._reload = reload
    token = sign(claims(), key=KEY_B, kid="kb")
    results = await asyncio.gather(*(s.verify(token) for _ in range(5)))
    assert calls == 1
    assert all(r.sub == "user:1" for r in results)
    await s.verify(token)
    assert calls == 1, "a known key needs no reload"


async def test_reloads_are_rate_limited() -> None:
    calls = 0

    async def reload() -> None:
        nonlocal calls
        calls += 1

    s = signer(reload=reload)
    for kid in ("x1", "x2", "x3"):
        await refused(s, sign(claims(), key=KEY_B, kid=kid), "unknown token signing key")
    assert calls == 1


async def test_reload_after_the_interval() -> None:
    calls = 0

    async def reload() -> None:
        nonlocal calls
        calls += 1

    s = signer(reload=reload, reload_interval=0.0)
    for kid in ("x1", "x2"):
        await refused(s, sign(claims(), key=KEY_B, kid=kid), "unknown token signing key")
    assert calls == 2


async def test_failing_reload_is_an_unknown_key() -> None:
    async def reload() -> None:
        raise OSError("control database unreachable")

    await refused(signer(reload=reload), sign(claims(), key=KEY_B, kid="kb"), "unknown token signing key")


async def test_rotation_keeps_old_tokens_valid() -> None:
    before = signer({"ka": KEY_A}, "ka")
    old = before.issue(audience="tenant", subject="user:1", role="user", ttl=60)
    after = signer({"ka": KEY_A, "kb": KEY_B}, "kb")
    new = after.issue(audience="tenant", subject="user:2", role="user", ttl=60)
    assert jwt.get_unverified_header(new)["kid"] == "kb"
    assert (await after.verify(old)).sub == "user:1"
    assert (await after.verify(new)).sub == "user:2"
    # Once the old key is dropped from the ring, its tokens stop verifying.
    dropped = signer({"kb": KEY_B}, "kb")
    await refused(dropped, old, "unknown token signing key")


def test_ring_needs_its_current_key() -> None:
    with pytest.raises(ValueError):
        KeyRing({"ka": KEY_A}, "kb")
    ring = KeyRing({"ka": KEY_A, "kb": KEY_B}, "kb")
    assert ring.current_kid == "kb" and ring.kids == {"ka", "kb"} and ring.signing_key() == ("kb", KEY_B)
    assert ring.get("kc") is None
