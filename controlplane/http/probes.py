"""Liveness and readiness probes (``/health/live``, ``/health/ready``)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from controlplane.http.state import PLATFORM_STATE_KEY
from controlplane.platform import Platform


@get("/health/live", tags=["health"], summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", tags=["health"], summary="The control database answers")
async def ready(state: State) -> Response[dict[str, Any]]:
    platform: NamedDependency[Platform] = state[PLATFORM_STATE_KEY]
    try:
        async with platform.control.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except Exception as exc:
        return Response(
            {"status": "unavailable", "error": "control_db_unavailable", "detail": str(exc)}, status_code=503
        )
    return Response({"status": "ok"})
