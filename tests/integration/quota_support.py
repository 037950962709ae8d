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
