"""Helpers of the audit tests: audit rows as the control database holds them, paged listings walked whole."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from tests.integration.tenant_support import fetch

Json = dict[str, Any]
Row = dict[str, Any]


async def platform_rows(control_dsn: str) -> list[Row]:
    """Every ``platform_audit`` row, oldest first (read around the code under test)."""
    return await fetch(
        control_dsn,
        "SELECT id, at, actor, action, tenant_id, tenant_slug, entity, entity_id, outcome,"
        " host(source_address) AS source_address, request_id, details FROM platform_audit ORDER BY id",
    )


async def new_rows(control_dsn: str, seen: int) -> list[Row]:
    return (await platform_rows(control_dsn))[seen:]


def assert_error(response: httpx.Response, status: int, code: str) -> Json:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: Json = response.json()
    assert body["error"] == code, body
    return body


async def walk(http: httpx.AsyncClient, path: str, params: dict[str, Any], limit: int, **kwargs: Any) -> list[Json]:
    """Every item of a keyset-paged listing, following ``next_cursor`` (asserting no page is empty)."""
    items: list[Json] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await http.get(path, params=query, **kwargs)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit


def newest_first(rows: list[Json]) -> list[int]:
    return [r["id"] for r in sorted(rows, key=lambda r: (r["at"], r["id"]), reverse=True)]


def jwt_subject(auth: dict[str, str]) -> str:
    payload = auth["Authorization"].removeprefix("Bearer ").split(".")[1]
    claims: Json = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sub"])
