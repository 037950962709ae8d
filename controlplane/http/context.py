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
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")
#: Names of the headers every response gets from ``stamp_headers`` (a handler's of the same name go).
_FIXED_NAMES = frozenset({b"x-request-id", _NOSNIFF[0]})


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def request_id(scope: Scope) -> str:
    state = _state(scope)
    rid: str | None = state.get(_ID_KEY)
    if rid is None:
        rid = state[_ID_KEY] = _given_id(scope) or f"{_PROCESS}-{next(_SEQUENCE):x}"
    return rid


def _given_id(scope: Scope) -> str | None:
    """The client's ``X-Request-ID`` (the first), if it is a sane token."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            return given if _REQUEST_ID.fullmatch(given) else None
    return None


def source_address(scope: Scope) -> str | None:
    client = scope.get("client")
    return client_address(client[0]) if client else None


def add_response_headers(scope: Scope, headers: dict[str, str]) -> None:
    add_raw_response_headers(scope, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()])


def add_raw_response_headers(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    """``add_response_headers`` for headers already encoded (lower-case names), as the hot path has them."""
    _state(scope).setdefault(_HEADERS_KEY, []).extend(headers)


def stamp_headers(message: Message, scope: Scope) -> None:
    """Our headers onto a response's start message (``metrics.requests.instrument`` runs it on every one).

    On the raw header list (what Litestar's ``MutableScopeHeaders`` wraps), in one pass over the handler's
    headers: every response passes here. Ours replace the handler's of the same name; a handler's own
    ``Cache-Control`` stays.
    """
    if message["type"] != "http.response.start":
        return
    rid = (b"x-request-id", request_id(scope).encode("latin-1"))
    added: list[tuple[bytes, bytes]] = scope["state"].get(_HEADERS_KEY) or []  # request_id() made the state
    replaced = _FIXED_NAMES.union([name for name, _ in added]) if added else _FIXED_NAMES
    raw: list[tuple[bytes, bytes]] = []
    no_store = True
    for name, value in message.get("headers") or ():
        lower = name.lower()
        if lower in replaced:
            continue
        if lower == b"cache-control":
            no_store = False
        raw.append((name, value))
    raw.append(rid)
    raw.append(_NOSNIFF)
    raw += added
    if no_store:
        raw.append(_NO_STORE)
    message["headers"] = raw
