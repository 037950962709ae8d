"""``cardvault serve`` keeps uvicorn's access log at ``CARDVAULT_LOG_LEVEL=INFO`` (and below) and skips it
above, where the logger would drop every line anyway (building them costs every request)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import serve


@pytest.mark.parametrize(("level", "logged"), [("INFO", True), ("WARNING", False)])
def test_access_lines_follow_the_log_level(
    control_dsn: str, tenant_template_name: str, tmp_path: Path, level: str, logged: bool
) -> None:
    marker = "/health/live?access-log-probe"
    with serve(control_dsn, tenant_template_name, tmp_path, CARDVAULT_LOG_LEVEL=level) as served:
        assert httpx.get(served.url + marker, timeout=10).status_code == 200
    access_lines = [line for line in served.log.read_text().splitlines() if f'"GET {marker} HTTP/1.1" 200' in line]
    assert len(access_lines) == (1 if logged else 0), served.log.read_text()[-2000:]
