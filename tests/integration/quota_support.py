"""Helpers of the quota-alert and capacity tests: usage and history written straight into the control database."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from controlplane.platform import Platform
from controlplane.usage import alerts


async def set_usage(control: psycopg.AsyncConnection[Any], tenant_id: uuid.UUID, quota: str, usage: int) -> None:
    await control.execute(
        "UPDATE tenant_quotas SET current_usage = %s WHERE tenant_id = %s AND quota_type = %s",
        (usage, tenant_id, quota),
    )


async def evaluate(platform: Platform, tenant_id: uuid.UUID | None = None) -> list[alerts.AlertChange]:
    async with platform.control.connection() as conn:
        return await alerts.evaluate(conn, tenant_id=tenant_id)


async def alert_rows(control: psycopg.AsyncConnection[Any], tenant_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """(quota, threshold, state, usage, limit) of every alert of the tenant, by id."""
    cur = await control.execute(
        "SELECT quota_type, threshold, state, usage, quota_limit FROM quota_alerts WHERE tenant_id = %s ORDER BY id",
        (tenant_id,),
    )
    return await cur.fetchall()


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body
    return body
