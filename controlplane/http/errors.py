"""One place that turns errors into ``{"error": code, "detail": ...}`` responses.

Domain errors carry their own code and status; Litestar's own HTTP errors (validation, unknown route,
wrong method, auth) get stable codes here. Anything else is a bug: it is logged with its traceback and
answered 500 ``internal_error`` without internals.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
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
    headers: dict[str, str] = dict(getattr(exc, "headers", None) or {})
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="cardvault"')
    return _json(exc.status, exc.to_json(), headers or None)


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


def query_canceled(_: Request[Any, Any, Any], exc: psycopg.errors.QueryCanceled) -> Response[dict[str, Any]]:
    """A statement hit its timeout (tenant API: 30 s): the request was too heavy, not the service broken."""
    log.warning("statement canceled: %s", str(exc).strip())
    return _json(
        503,
        {"error": "query_timeout", "detail": "the query took too long and was canceled; narrow it or retry"},
        {"Retry-After": "5"},
    )


def exception_group(request: Request[Any, Any, Any], exc: ExceptionGroup[Exception]) -> Response[dict[str, Any]]:
    """Answer a group of one error as that error.

    Litestar wraps what a yield dependency raises while another exception is thrown into it in an
    ``ExceptionGroup`` (``open_tenant_request`` turns a connection lost under a query into ``TenantUnavailable``).
    """
    leaves: list[Exception] = []
    pending: list[Exception] = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, ExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    if len(leaves) == 1:
        if isinstance(leaves[0], psycopg.errors.QueryCanceled):
            return query_canceled(request, leaves[0])
        if isinstance(leaves[0], CardVaultError):
            return domain_error(request, leaves[0])
        if isinstance(leaves[0], HTTPException):
            return http_error(request, leaves[0])
    return unexpected_error(request, exc)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    CardVaultError: domain_error,
    HTTPException: http_error,
    ExceptionGroup: exception_group,
    psycopg.errors.QueryCanceled: query_canceled,
    Exception: unexpected_error,
}
