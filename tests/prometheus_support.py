"""The Prometheus tools and files the metrics tests use: ``promtool`` / ``prometheus``, the rules and the
dashboard under ``ops/``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: ``ops/prometheus``: the scrape configuration and the alert rules (the dashboard is ``ops/grafana``).
OPS = Path(__file__).resolve().parents[1] / "ops" / "prometheus"


def prometheus_tool(name: str) -> str:
    """Path of ``promtool`` or ``prometheus`` (Debian package ``prometheus``, which ``make test`` installs
    when it runs as root); the test fails saying what to install when it is missing."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if not found:
        pytest.fail(f"{name} not found: install Prometheus (Debian/Ubuntu: `apt-get install prometheus`)")
    return found


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_tool("promtool"), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=60,
    )


def assert_promtool_clean(text: bytes) -> None:
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        f"promtool check metrics: rc={done.returncode}\n{done.stdout}{done.stderr}"
    )


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((OPS.parent / "grafana" / "cardvault.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
