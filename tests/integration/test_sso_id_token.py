"""ID token verification (``controlplane.sso.oidc.Discovery``) against the real provider's discovery document
and JWKS: tokens signed with the provider's own key are still refused when their audience, nonce, issuer
or times are wrong, and so is one signed with another key or altered after signing."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from controlplane.sso.errors import SsoProviderError, SsoRejected
from controlplane.sso.models import SsoProvider
from controlplane.sso.oidc import Discovery
from tests.oidc_harness import OidcProvider

NONCE = "the-nonce"


def _provider(issuer: str) -> SsoProvider:
    return SsoProvider(
        issuer=issuer, client_id="cardvault", client_secret="x", allowed_domains=["sso.test"], default_role="user"
    )


def _sign(key: RSAKey, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "u1", "aud": "cardvault", "nonce": NONCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {k: v for k, v in payload.items() if v is not None}, key)


async def test_id_token_checks(oidc_provider: OidcProvider) -> None:
    discovery = Discovery()
    provider = _provider(oidc_provider.issuer)
    key = RSAKey.import_key(oidc_provider.private_jwk())
    good = _sign(key, iss=oidc_provider.issuer)
    claims = await discovery.verify(provider, good, nonce=NONCE)
    assert claims["sub"] == "u1"

    now = int(time.time())
    refused = {
        "audience": _sign(key, iss=oidc_provider.issuer, aud="another-client"),
        "nonce": _sign(key, iss=oidc_provider.issuer, nonce="replayed-nonce"),
        "no nonce": _sign(key, iss=oidc_provider.issuer, nonce=None),
        "issuer": _sign(key, iss="https://evil.test"),
        "expired": _sign(key, iss=oidc_provider.issuer, iat=now - 4000, exp=now - 3600),
        "other key": _sign(RSAKey.generate_key(2048, parameters={"kid": key.kid}), iss=oidc_provider.issuer),
        "azp": _sign(key, iss=oidc_provider.issuer, aud=["cardvault", "other"], azp="other"),
    }
    header, payload, signature = good.split(".")
    refused["altered"] = ".".join([header, payload[:-4] + ("AAAA" if payload[-4:] != "AAAA" else "BBBB"), signature])
    for what, token in refused.items():
        with pytest.raises(SsoRejected):
            await discovery.verify(provider, token, nonce=NONCE)
        print(what, "refused")


async def test_unreachable_or_wrong_issuer_is_a_provider_error(oidc_provider: OidcProvider) -> None:
    discovery = Discovery(timeout=2)
    with pytest.raises(SsoProviderError):  # nothing listens there
        await discovery.document("http://127.0.0.1:9")
    with pytest.raises(SsoProviderError):  # the document names another issuer (no trailing slash)
        await discovery.document(oidc_provider.issuer + "/")
