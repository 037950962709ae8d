"""Fleet & capacity (``GET /admin/ui/fleet``): the servers, their fill and the capacity planning.

The page is ``/admin/capacity`` drawn: the same ``capacity.capacity_report`` (servers with tenants, bytes,
connections and growth; quotas projected to be reached; tier upgrades recommended), with the horizon and a
server's capacity asked in a plain GET form (there is no capacity setting: PostgreSQL does not know its
disk). With a capacity, each server gets a fill bar, a projected full date and a line in the chart. The
report fits every tenant's history (seconds at 10,000 tenants) and only moves with the collections, so
the page reuses one made in the last ``REPORT_TTL_SECONDS`` for the same horizon and capacity.

``server_fill`` is the cheap part the overview shows: the collectors' in-memory snapshot of the servers,
or, before a first collection, one statement over the registry and the tenants' last scans.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Request, get
from litestar.datastructures import State
from litestar.response import Template

from controlplane.db import AsyncConn
from controlplane.errors import ValidationFailed
from controlplane.http.admin import admin_principal
from controlplane.http.state import PLATFORM_STATE_KEY, USAGE_STATE_KEY
from controlplane.platform import Platform
from controlplane.usage import capacity
from controlplane.usage.service import UsageService
from controlplane.web.admin.tenant_list_repository import server_sizes
from controlplane.web.charts import Limit, Series, line_chart
from controlplane.web.pages import page
from controlplane.web.templating import human_bytes

_GIB = 1024**3
#: Most a capacity form may say (a petabyte).
_MAX_CAPACITY_GIB = 1024 * 1024
#: Rows of the at-risk and recommendation tables.
_ROWS = 50
#: ``app.state`` key of the capacity reports this app made lately, by (horizon days, capacity bytes).
_REPORTS_STATE_KEY = "web_admin_capacity_reports"
#: Seconds a report is reused: it moves only with the usage history (a collection every few minutes), and
#: making one fits every tenant's history (seconds at 10,000 tenants).
REPORT_TTL_SECONDS = 60.0
_SERIES_CLASSES = ("series", "series-2", "series-bad", "projection")
#: The legend swatch (``app.css``) of each series class.
_SWATCHES = {"series": "", "series-2": "info", "series-bad": "limit", "projection": "dashed"}


class ServerFill(msgspec.Struct, kw_only=True):
    name: str
    status: str
    tenants: int
    database_bytes: int
    #: Backends and ``max_connections`` (only known from the collectors' snapshot).
    connections: int | None
    max_connections: int | None


def snapshot_servers(state: State) -> dict[str, capacity.SnapshotServer] | None:
    """The collectors' last view of the servers (as ``/admin/capacity`` takes it), or None before one."""
    usage: UsageService = state[USAGE_STATE_KEY]
    servers = usage.snapshot.servers
    if not servers:
        return None
    return {
        name: capacity.SnapshotServer(
            tenants=s.tenants,
            database_bytes=s.database_bytes,
            connections=s.connections,
            max_connections=s.max_connections,
        )
        for name, s in servers.items()
    }


async def server_fill(state: State, conn: AsyncConn) -> list[ServerFill]:
    """Every server's tenants, bytes and connections: from memory when the collectors have run."""
    usage: UsageService = state[USAGE_STATE_KEY]
    if usage.snapshot.servers:
        return [
            ServerFill(
                name=s.name,
                status=s.status,
                tenants=s.tenants,
                database_bytes=s.database_bytes,
                connections=s.connections,
                max_connections=s.max_connections,
            )
            for s in sorted(usage.snapshot.servers.values(), key=lambda s: s.name)
        ]
    return [
        ServerFill(
            name=row["name"],
            status=row["status"],
            tenants=int(row["tenants"]),
            database_bytes=int(row["database_bytes"]),
            connections=None,
            max_connections=None,
        )
        for row in await server_sizes(conn)
    ]


def _int_param(params: dict[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise ValidationFailed(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def _fill_chart(report: capacity.CapacityReport) -> Any:
    """Each server's bytes now and along its growth to the horizon, with the capacity as the limit."""
    end = report.generated_at + timedelta(days=report.horizon_days)
    series = [
        Series(
            label=server.name,
            points=[
                (report.generated_at, float(server.database_bytes)),
                (end, float(server.database_bytes) + server.growth_bytes_per_day * report.horizon_days),
            ],
            css=_SERIES_CLASSES[i % len(_SERIES_CLASSES)],
        )
        for i, server in enumerate(report.servers)
    ]
    limits = [] if report.servers[0].capacity_bytes is None else [Limit("capacity", report.servers[0].capacity_bytes)]
    return line_chart("Projected fill per server", series, limits=limits, fmt=human_bytes, empty="No servers yet")


async def _report(state: State, days: int, capacity_bytes: int | None) -> capacity.CapacityReport:
    """``/admin/capacity``'s report, made at most once per ``REPORT_TTL_SECONDS`` for each parameter pair."""
    now = time.monotonic()
    kept: dict[tuple[int, int | None], tuple[float, capacity.CapacityReport]] = {
        key: made for key, made in state.get(_REPORTS_STATE_KEY, {}).items() if now - made[0] < REPORT_TTL_SECONDS
    }
    made = kept.get((days, capacity_bytes))
    if made is not None:
        return made[1]
    platform: Platform = state[PLATFORM_STATE_KEY]
    async with platform.control.connection() as conn:
        report = await capacity.capacity_report(
            conn, horizon_days=days, limit=_ROWS, capacity_bytes=capacity_bytes, snapshot=snapshot_servers(state)
        )
    kept[(days, capacity_bytes)] = (time.monotonic(), report)
    state[_REPORTS_STATE_KEY] = kept  # replaced whole: expired reports are dropped here
    return report


@get("/fleet", name="admin_ui_fleet", summary="Servers, fill and capacity planning")
async def fleet_page(request: Request[Any, Any, Any]) -> Template:
    params = dict(request.query_params)
    days = _int_param(params, "days", 30, 1, 365) or 30
    capacity_gib = _int_param(params, "capacity_gib", None, 1, _MAX_CAPACITY_GIB)
    report = await _report(request.app.state, days, capacity_gib * _GIB if capacity_gib is not None else None)
    return page(
        request,
        "admin/fleet.html",
        principal=admin_principal(request),
        title="Fleet & capacity",
        report=report,
        days=days,
        capacity_gib=capacity_gib or "",
        chart=_fill_chart(report) if report.servers else None,
        legend=[(s.name, _SWATCHES[_SERIES_CLASSES[i % len(_SERIES_CLASSES)]]) for i, s in enumerate(report.servers)],
    )


HANDLERS: list[Any] = [fleet_page]
