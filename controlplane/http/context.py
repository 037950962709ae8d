"""Per-request facts every API module shares: the request id, the client address, extra response headers.

The request id is the client's ``X-Request-ID`` when it is a sane token (so a gateway's id follows the
request into audit rows and logs), else a new one (process prefix + counter); it is echoed on every
response. Handlers and dependencies add response headers (``RateLimit-*``) with
``add_response_headers``; ``stamp_headers`` writes them, on errors too.

Every response also says ``X-Content-Type-Options: nosniff`` and, unless its handler chose a caching
policy of its own (a card image: ``private, max-age=60`` with an ETag; a signed file link's object:
public until the link expires), ``Cache-Control: no-store``. Everything else this service answers is
private to its caller (tokens, API keys, invitation tokens, a tenant's data), so no browser or proxy
cache may keep any of it.
"""

from __future__ import annotations

import itertools
import re
import secrets
from typing import Any

from litestar.types import Message, Scope

from controlplane.context import client_address

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Generated ids: this process's random prefix and a counter (unique without a uuid4 per response).
_PROCESS = secrets.token_hex(6)
_SEQUENCE = itertools.count(1)
_ID_KEY = "cardvault.request_id"
_HEADERS_KEY = "cardvault.response_headers"


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def request_id(scope: Scope) -> str:
    state = _state(scope)
    rid: str | None = state.get(_ID_KEY)
    if rid is None:
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else f"{_PROCESS}-{next(_SEQUENCE):x}"
        state[_ID_KEY] = rid
    return rid


def source_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return client_address(client[0]) if client else None


def add_response_headers(scope: Scope, headers: dict[str, str]) -> None:
    _state(scope).setdefault(_HEADERS_KEY, {}).update(headers)


def stamp_headers(message: Message, scope: Scope) -> None:
    """Our headers onto a response's start message (``metrics.requests.instrument`` runs it on every one)."""
    if message["type"] != "http.response.start":
        return
    # On the raw header list (what MutableScopeHeaders wraps): every response passes here.
    ours = {b"x-request-id": request_id(scope).encode("latin-1"), b"x-content-type-options": b"nosniff"}
    added = scope["state"].get(_HEADERS_KEY)  # request_id() made sure of scope["state"]
    if added:
        for name, value in added.items():
            ours[name.lower().encode("latin-1")] = value.encode("latin-1")
    raw: list[tuple[bytes, bytes]] = list(message.get("headers") or ())
    present = {name.lower() for name, _ in raw}
    if b"cache-control" not in present:
        ours[b"cache-control"] = b"no-store"
    if not present.isdisjoint(ours):  # ours replace the handler's
        raw = [(name, value) for name, value in raw if name.lower() not in ours]
    raw.extend(ours.items())
    message["headers"] = raw
