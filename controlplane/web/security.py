"""What keeps the pages safe in a browser: their response headers and CSRF tokens.

- Every page carries a strict Content-Security-Policy: scripts, styles, images and requests from this
  origin only, no inline script or style, no framing, forms post to this origin only. htmx is told by
  its ``<meta name="htmx-config">`` not to inject its indicator styles and never to evaluate code.
- CSRF: the browser holds a random ``cv_csrf`` cookie (HttpOnly, SameSite=Strict). A form carries
  ``HMAC(secret, cookie | login session id)`` in its ``csrf_token`` field (htmx requests send it as the
  ``X-CSRF-Token`` header, from ``hx-headers`` on ``<body>``). Every unsafe request to a page must carry
  the token of the cookie it came with and of the session it is signed in with; a cross-site request
  (``Sec-Fetch-Site: cross-site`` or a foreign ``Origin``) is refused before that. The token is bound to
  the session, so a token seen before signing in or in another session is worthless afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.datastructures import UploadFile

from controlplane.errors import Forbidden

CSRF_COOKIE = "cv_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: ``scope["state"]`` keys: the login session id a page request is signed in with (None: signed out),
#: and the CSRF cookie value of the request (a new one when the browser sent none; ``sessions`` sets it).
SESSION_ID_KEY = "cardvault.web_session"
CSRF_COOKIE_KEY = "cardvault.web_csrf"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
#: Headers of every page response (static files get the same, minus ``Cache-Control``).
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-store",
}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfRejected(Forbidden):
    code = "csrf_failed"


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(key: bytes, cookie: str, session_id: str | None) -> str:
    """The token forms must carry for this CSRF cookie and login session."""
    mac = hmac.new(key, f"csrf|{cookie}|{session_id or '-'}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def csrf_key(secret_key: str) -> bytes:
    return hashlib.sha256(f"cardvault web csrf|{secret_key}".encode()).digest()


def request_csrf_token(request: Request[Any, Any, Any], key: bytes) -> str:
    """The token for the page being rendered (its forms and its htmx requests)."""
    state = request.scope.get("state", {})
    return csrf_token(key, state.get(CSRF_COOKIE_KEY, ""), state.get(SESSION_ID_KEY))


def _same_origin(request: Request[Any, Any, Any]) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def check_csrf(request: Request[Any, Any, Any], key: bytes) -> None:
    """403 ``csrf_failed`` unless an unsafe request is same-origin and carries the right token."""
    if request.method in _SAFE_METHODS:
        return
    if not _same_origin(request):
        raise CsrfRejected("a cross-site request to a page is refused")
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            presented = value if isinstance(value, str) and not isinstance(value, UploadFile) else None
    cookie = request.scope.get("state", {}).get(CSRF_COOKIE_KEY)
    if not presented or not cookie or request.cookies.get(CSRF_COOKIE) != cookie:
        raise CsrfRejected("the form has expired or did not come from this site; reload the page and try again")
    expected = request_csrf_token(request, key)
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise CsrfRejected("the form has expired or did not come from this site; reload the page and try again")
