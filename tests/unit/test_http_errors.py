"""The one error handler and the admin guard, on a tiny app without a database.

Every error leaves as ``{"error": code, "detail": ...}``: domain errors with their own status and code,
Litestar's request errors with stable codes (all its 400s are ``validation_failed``), anything else as
a 500 ``internal_error`` that does not leak the exception text.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
import pytest
from litestar import Litestar, Response, Router, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody
from litestar.testing import TestClient

from controlplane.auth.passwords import Passwords
from controlplane.auth.ratelimit import MemoryCounter, RateLimiter
from controlplane.auth.service import Authenticator, hash_secret
from controlplane.auth.tokens import KeyRing, TokenSigner
from controlplane.errors import (
    CardVaultError,
    InvalidSlug,
    NoServerAvailable,
    OperationFailed,
    ServerUnavailable,
    SlugTaken,
    TenantNotFound,
)
from controlplane.http.admin import admin_guard
from controlplane.http.context import stamp_headers
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.http.state import ADMIN_TOKEN_HASH_STATE_KEY
from controlplane.metrics.requests import HttpMetrics, instrument
from controlplane.settings import AuthSettings

TOKEN = "unit-test-token"


class Body(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int = 0


DOMAIN_ERRORS: list[tuple[CardVaultError, int, str]] = [
    (InvalidSlug("bad slug", slug="X"), 400, "invalid_slug"),
    (TenantNotFound("no such tenant", slug="nope"), 404, "tenant_not_found"),
    (SlugTaken("taken", slug="acme"), 409, "slug_taken"),
    (ServerUnavailable("server down"), 503, "server_unavailable"),
    (NoServerAvailable("no server"), 503, "no_server_available"),
    (OperationFailed("step failed", step="create_role"), 500, "operation_failed"),
]


@pytest.fixture(scope="module")
def client() -> Any:
    @get("/domain/{index:int}")
    async def domain(index: FromPath[int]) -> None:
        raise DOMAIN_ERRORS[index][0]

    @get("/litestar/not-found")
    async def litestar_not_found() -> None:
        raise NotFoundException("nothing here")

    @get("/litestar/forbidden")
    async def litestar_forbidden() -> None:
        raise PermissionDeniedException("no")

    @get("/slow")
    async def slow() -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    @get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @post("/body")
    async def body(data: JSONBody[Body]) -> dict[str, Any]:
        return {"name": data.name, "count": data.count}

    @get("/admin/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    @get("/cacheable")
    async def cacheable() -> Response[bytes]:
        return Response(b"img", media_type="image/png", headers={"Cache-Control": "private, no-cache"})

    admin = Router(path="/", route_handlers=[ping], guards=[admin_guard])
    app = Litestar(
        route_handlers=[domain, litestar_not_found, litestar_forbidden, slow, bug, body, cacheable, admin],
        exception_handlers=EXCEPTION_HANDLERS,
        state=State(
            {
                ADMIN_TOKEN_HASH_STATE_KEY: hash_secret(TOKEN),
                "auth": Authenticator(
                    AuthSettings(),
                    TokenSigner(KeyRing({"k1": b"k" * 32}, "k1")),
                    Passwords(AuthSettings()),
                    RateLimiter(MemoryCounter()),
                ),
            }
        ),
    )
    instrument(app, HttpMetrics(), on_start=stamp_headers)  # as create_app does
    with TestClient(app=app) as test_client:
        yield test_client


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    return body


@pytest.mark.parametrize("index", range(len(DOMAIN_ERRORS)))
def test_domain_errors_keep_their_status_code_and_extras(client: Any, index: int) -> None:
    exc, status, code = DOMAIN_ERRORS[index]
    body = error_of(client.get(f"/domain/{index}"), status)
    assert body == {"error": code, "detail": exc.detail, **exc.extra}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content": b'{"name": "x"'},  # truncated
        {"content": b"{name: x}"},  # malformed
        {"content": b""},  # empty
        {"json": {"name": "x", "extra": 1}},  # unknown field
        {"json": {"name": 1}},  # wrong type
        {"json": {"count": 1}},  # missing field
        {"json": ["x"]},  # not an object
    ],
    ids=["truncated", "malformed", "empty", "unknown-field", "wrong-type", "missing", "array"],
)
def test_request_that_cannot_be_decoded_is_validation_failed(client: Any, kwargs: dict[str, Any]) -> None:
    assert error_of(client.post("/body", **kwargs), 400)["error"] == "validation_failed"


def test_valid_body_passes(client: Any) -> None:
    response = client.post("/body", json={"name": "x", "count": 2})
    assert response.status_code == 201 and response.json() == {"name": "x", "count": 2}


def test_litestar_http_errors_get_stable_codes(client: Any) -> None:
    assert error_of(client.get("/litestar/not-found"), 404)["error"] == "not_found"
    assert error_of(client.get("/litestar/forbidden"), 403)["error"] == "forbidden"
    assert error_of(client.get("/no/such/route"), 404)["error"] == "not_found"
    assert error_of(client.delete("/body"), 405)["error"] == "method_not_allowed"


def test_a_statement_timeout_is_503_query_timeout(client: Any) -> None:
    response = client.get("/slow")
    assert error_of(response, 503)["error"] == "query_timeout"
    assert response.headers["retry-after"] == "5"


def test_unexpected_errors_are_500_without_internals(client: Any) -> None:
    body = error_of(client.get("/bug"), 500)
    assert body["error"] == "internal_error"
    assert "hunter2" not in client.get("/bug").text and "RuntimeError" not in body["detail"]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"bearer {TOKEN}x", f"Token {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"],
)
def test_admin_guard_refuses_anything_but_the_token(client: Any, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = error_of(client.get("/admin/ping", headers=headers), 401)
    assert body["error"] in ("unauthorized", "invalid_token")


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_admin_guard_accepts_the_token(client: Any, authorization: str) -> None:
    response = client.get("/admin/ping", headers={"Authorization": authorization})
    assert response.status_code == 200 and response.json() == {"pong": "yes"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/body", 201),
        ("GET", "/domain/1", 404),
        ("GET", "/bug", 500),
        ("GET", "/admin/ping", 401),
        ("GET", "/no/such/route", 404),
    ],
)
def test_every_response_is_nosniff_and_no_store(client: Any, method: str, path: str, status: int) -> None:
    response = client.request(method, path, json={"name": "x"} if method == "POST" else None)
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]


def test_a_route_with_its_own_caching_policy_keeps_it(client: Any) -> None:
    response = client.get("/cacheable")
    assert response.status_code == 200 and response.content == b"img"
    assert response.headers["cache-control"] == "private, no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
