"""Talking to a tenant's OpenID provider: discovery (cached briefly), the authorization URL (state, nonce,
PKCE S256 via ``authlib``), the code exchange, and the ID token's verification (``joserfc``, authlib's JOSE
library): signature against the issuer's JWKS, ``iss``, ``aud``, ``azp``, ``nonce``, ``exp``/``iat``.

Every failure of the provider is an ``SsoProviderError`` (502) and every unacceptable token an
``SsoRejected`` (401): nothing a provider does becomes a 500.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from controlplane.sso.errors import SsoProviderError, SsoRejected
from controlplane.sso.models import SsoProvider

#: Seconds a discovery document and its JWKS are reused; timeout of every call to a provider.
DISCOVERY_TTL = 300.0
TIMEOUT = 10.0
#: Seconds of clock skew allowed on ``exp``/``iat``.
LEEWAY = 60
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]


class Discovery:
    """Discovery documents and key sets by issuer, each kept ``DISCOVERY_TTL`` seconds."""

    def __init__(self, *, ttl: float = DISCOVERY_TTL, timeout: float = TIMEOUT) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._documents: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: dict[str, tuple[float, KeySet]] = {}

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SsoProviderError(f"the identity provider did not answer {url}: {type(exc).__name__}") from None
        if response.status_code != 200 or not isinstance(body, dict):
            raise SsoProviderError(f"the identity provider answered {url} with HTTP {response.status_code}")
        return body

    async def document(self, issuer: str) -> dict[str, Any]:
        cached = self._documents.get(issuer)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        doc = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if doc.get("issuer") != issuer:
            raise SsoProviderError(f"the discovery document names issuer {doc.get('issuer')!r}, not {issuer!r}")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(field), str):
                raise SsoProviderError(f"the discovery document has no {field}")
        self._documents[issuer] = (time.monotonic() + self._ttl, doc)
        return doc

    async def keys(self, issuer: str, *, refresh: bool = False) -> KeySet:
        cached = self._keys.get(issuer)
        if cached is not None and cached[0] > time.monotonic() and not refresh:
            return cached[1]
        doc = await self.document(issuer)
        try:
            key_set = KeySet.import_key_set(await self._get_json(doc["jwks_uri"]))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise SsoProviderError("the identity provider's JWKS is not a key set") from None
        self._keys[issuer] = (time.monotonic() + self._ttl, key_set)
        return key_set

    async def authorization_url(
        self, provider: SsoProvider, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        doc = await self.document(provider.issuer)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": provider.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email profile",
                "state": state,
                "nonce": nonce,
                "code_challenge": create_s256_code_challenge(code_verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(doc["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def exchange(self, provider: SsoProvider, *, code: str, redirect_uri: str, code_verifier: str) -> str:
        """The ID token the provider gives for ``code`` (client_secret_basic, PKCE verifier)."""
        doc = await self.document(provider.issuer)
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.post(
                    str(doc["token_endpoint"]),
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": redirect_uri,
                        "code_verifier": code_verifier,
                    },
                    auth=(provider.client_id, provider.client_secret),
                    headers={"Accept": "application/json"},
                )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SsoProviderError(f"the token endpoint did not answer: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise SsoProviderError("the token endpoint answered nonsense")
        if response.status_code in (400, 401) and isinstance(body.get("error"), str):
            raise SsoRejected(f"the identity provider refused the code: {body['error']}")
        id_token = body.get("id_token")
        if response.status_code != 200 or not isinstance(id_token, str):
            raise SsoProviderError(f"the token endpoint answered HTTP {response.status_code} without an ID token")
        return id_token

    async def verify(self, provider: SsoProvider, id_token: str, *, nonce: str) -> dict[str, Any]:
        """The ID token's claims, once its signature, issuer, audience, nonce and times hold."""
        key_set = await self.keys(provider.issuer)
        try:
            try:
                token = jwt.decode(id_token, key_set, algorithms=_ALGORITHMS)
            except JoseError:
                key_set = await self.keys(provider.issuer, refresh=True)  # the provider may have rotated its keys
                token = jwt.decode(id_token, key_set, algorithms=_ALGORITHMS)
            claims: dict[str, Any] = dict(token.claims)
            registry = JWTClaimsRegistry(
                leeway=LEEWAY,
                iss={"essential": True, "value": provider.issuer},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            )
            registry.validate(claims)
        except (JoseError, ValueError) as exc:
            raise SsoRejected(f"the ID token is not valid: {exc}") from None
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if provider.client_id not in audiences:
            raise SsoRejected("the ID token was issued for another client")
        if len(audiences) > 1 and claims.get("azp") != provider.client_id:
            raise SsoRejected("the ID token was issued for another client")
        return claims
