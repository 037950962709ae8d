"""One place that turns errors into ``{"error": code, "detail": ...}`` responses.

Domain errors carry their own code and status; Litestar's own HTTP errors (validation, unknown route,
wrong method, auth) get stable codes here. Anything else is a bug: it is logged with its traceback and
answered 500 ``internal_error`` without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from controlplane.errors import CardVaultError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def domain_error(_: Request[Any, Any, Any], exc: CardVaultError) -> Response[dict[str, Any]]:
    if exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.detail)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return _json(exc.status, exc.to_json(), headers)


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    # Litestar answers 400 only for a request it cannot decode or validate (malformed JSON, wrong
    # types, unknown fields, bad parameters): one code for all of them.
    if isinstance(exc, ValidationException) or status == 400:
        body: dict[str, Any] = {"error": "validation_failed", "detail": exc.detail}
        if exc.extra:
            body["fields"] = exc.extra
        return _json(400, body)
    headers = dict(exc.headers or {})
    code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    return _json(status, {"error": code, "detail": exc.detail}, headers)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, {"error": "internal_error", "detail": "internal error; see the service log"})


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CardVaultError: domain_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
