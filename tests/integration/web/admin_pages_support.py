"""Helpers of the dashboard page tests: registry rows written straight into the control database (tenants
the list and the overview count, without databases of their own), their usage, and a signed-in admin."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from controlplane.platform import Platform
from tests.integration.auth_support import make_admin
from tests.integration.web.web_support import sign_in_admin

_ROW_SLUG = re.compile(r'<td><a href="/admin/ui/tenants/([a-z0-9-]+)">')


@dataclasses.dataclass(frozen=True)
class Listed:
    """A tenant registered directly: its registry values and the usage written for it."""

    slug: str
    name: str
    status: str = "active"
    tier: str = "starter"
    size: int | None = None
    #: Bytes per day between two ``database_bytes`` points ten days apart (None: no history).
    growth: float | None = None
    cards: int = 0
    users: int = 0


async def default_server(control: Any) -> tuple[uuid.UUID, str]:
    cur = await control.execute("SELECT id, name FROM db_servers ORDER BY name LIMIT 1")
    row = await cur.fetchone()
    assert row is not None, "no server registered (open the app or the platform first)"
    return row[0], row[1]


async def register(control: Any, tenants: list[Listed], *, created_days_ago: float = 0) -> dict[str, uuid.UUID]:
    """Registry rows (no databases), quotas of their tier, scans and history as the collectors write them."""
    server_id, _ = await default_server(control)
    ids = {t.slug: uuid.uuid4() for t in tenants}
    created = datetime.now(UTC) - timedelta(days=created_days_ago)
    limits = {
        "starter": (1000, 1, 1024**3),
        "professional": (50_000, 10, 25 * 1024**3),
        "enterprise": (None, None, None),
    }
    async with control.cursor() as cur:
        await cur.executemany(
            "INSERT INTO tenants (id, name, slug, status, subscription_tier, server_id, database_name, role_name,"
            " role_password_encrypted, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'x', %s)",
            [
                (
                    ids[t.slug],
                    t.name,
                    t.slug,
                    t.status,
                    t.tier,
                    server_id,
                    f"t_{ids[t.slug].hex}",
                    f"t_{ids[t.slug].hex}",
                    created,
                )
                for t in tenants
            ],
        )
        quota_rows = []
        for t in tenants:
            cards_limit, users_limit, storage_limit = limits[t.tier]
            quota_rows += [
                (ids[t.slug], "cards", cards_limit, t.cards),
                (ids[t.slug], "users", users_limit, t.users),
                (ids[t.slug], "storage_bytes", storage_limit, 0),
            ]
        await cur.executemany(
            "INSERT INTO tenant_quotas (tenant_id, quota_type, quota_limit, current_usage) VALUES (%s, %s, %s, %s)",
            quota_rows,
        )
        sized = [t for t in tenants if t.size is not None]
        await cur.executemany(
            "INSERT INTO tenant_usage_scans (tenant_id, database_bytes, scanned_at) VALUES (%s, %s, now())",
            [(ids[t.slug], t.size) for t in sized],
        )
        points = []
        for t in sized:
            if t.growth is not None:
                start = t.size - t.growth * 10  # type: ignore[operator]
                points += [(ids[t.slug], start, 10), (ids[t.slug], float(t.size or 0), 0)]
        await cur.executemany(
            "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
            " VALUES (%s, 'database_bytes', %s, now() - make_interval(days => %s))",
            points,
        )
    return ids


async def signed_in_admin(browser: httpx.AsyncClient, platform: Platform) -> None:
    await make_admin(platform)
    await sign_in_admin(browser)


def listed_slugs(html: str) -> list[str]:
    """The slugs of the tenants table's rows, in order."""
    return _ROW_SLUG.findall(html)


def next_link(html: str) -> str | None:
    found = re.search(r'href="([^"]+)" rel="next"', html)
    return found.group(1).replace("&amp;", "&") if found else None
