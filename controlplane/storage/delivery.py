"""Serving stored files over HTTP, free of HTTP types: entity tags, conditional requests, cache policies
and signed file links.

- **Entity tag**: the object's SHA-256 (from its ``files`` row), quoted. ``If-None-Match`` is compared
  weakly (RFC 9110 13.1.2: ``W/`` prefixes ignored, ``*`` matches any object): a match is answered 304
  with no body.
- **Cache policies**: the authenticated image route answers ``private, max-age=60``: a browser may keep
  it a minute, no shared cache may keep it at all (it is behind the tenant's credentials, and the same
  URL shows another image once the card's image is replaced). A signed link names one object by its key,
  and keys are content-addressed and never reused, so what it serves never changes: ``public,
  max-age=<seconds until the link expires>, immutable``, and a CDN may keep it until then.
- **Signed links**: ``/t/{slug}/files/{key}?expires=<unix time>&sig=<signature>``, the signature an
  HMAC-SHA256 over the tenant id, the key and the expiry, with a key derived from the secret key (never
  the secret key itself). No bearer is needed: whoever holds the link may fetch that one object until it
  expires. The tenant id (not the slug) is signed, so a link never opens another tenant's object, whatever
  slug it is sent to. Expiries are rounded up to the hour: every link made for an object within the same
  hour is the same URL, so a CDN keeps one copy per object and hour instead of one per request. Links
  signed with a previous secret key (``CARDVAULT_SECRET_KEY_PREVIOUS``) stay valid until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from controlplane.errors import NotFound

#: ``Cache-Control`` of the authenticated image route.
PRIVATE_CACHE_CONTROL = "private, max-age=60"
#: Seconds a signed link is valid for at least (it is rounded up to ``LINK_STEP``).
LINK_TTL = 86400
#: Expiries are multiples of this many seconds (Unix time).
LINK_STEP = 3600
#: Purpose string the link key is derived with (changing it invalidates every link).
_KEY_PURPOSE = b"cardvault file links v1"


class FileLinkInvalid(NotFound):
    """A signed file link that is forged, altered, expired, or names an object that is gone: 404."""

    code = "file_link_invalid"


def etag(sha256: str) -> str:
    """The entity tag of an object with this content digest."""
    return f'"{sha256}"'


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """True when ``If-None-Match`` names ``tag`` (weak comparison) or is ``*``."""
    if not if_none_match:
        return False
    wanted = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def public_cache_control(expires: int, now: float) -> str:
    """``Cache-Control`` of a signed link's object: public and immutable until the link expires."""
    return f"public, max-age={max(0, expires - math.ceil(now))}, immutable"


@dataclass(frozen=True)
class SignedLink:
    """A signed link to one object: ``path`` (with its query string) and when it expires (Unix time)."""

    path: str
    expires: int


def _derive(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()


class FileLinks:
    """Makes and checks signed file links (see the module docstring)."""

    def __init__(
        self,
        secret_key: str,
        previous_keys: Sequence[str] = (),
        *,
        ttl: int = LINK_TTL,
        step: int = LINK_STEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret_key:
            raise ValueError("signed file links need the secret key")
        self._keys = [_derive(secret_key), *(_derive(k) for k in previous_keys if k)]
        self._ttl = ttl
        self._step = step
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def _signature(self, key: bytes, tenant_id: uuid.UUID, object_key: str, expires: int) -> str:
        message = f"{tenant_id}\n{object_key}\n{expires}".encode()
        digest = hmac.new(key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def link(self, tenant_id: uuid.UUID, slug: str, object_key: str) -> SignedLink:
        """A link to the tenant's object valid for at least ``ttl`` seconds (expiry rounded up to ``step``)."""
        expires = math.ceil((self._clock() + self._ttl) / self._step) * self._step
        signature = self._signature(self._keys[0], tenant_id, object_key, expires)
        query = urlencode({"expires": expires, "sig": signature})
        return SignedLink(f"/t/{quote(slug, safe='')}/files/{quote(object_key, safe='')}?{query}", expires)

    def verify(self, tenant_id: uuid.UUID, object_key: str, expires: int, signature: str) -> None:
        """Raise ``FileLinkInvalid`` unless ``signature`` was made by ``link`` for exactly this tenant, key
        and expiry (with the current or a previous secret key) and the expiry has not passed."""
        valid = any(
            hmac.compare_digest(self._signature(key, tenant_id, object_key, expires).encode(), signature.encode())
            for key in self._keys
        )
        if not valid:
            raise FileLinkInvalid("this file link is not valid (forged, altered or for another tenant)")
        if expires <= self._clock():
            raise FileLinkInvalid("this file link has expired; ask the API for a new one", expired=True)
