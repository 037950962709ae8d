"""Helpers of the admin API tests: the registry as it is, error bodies, tenants made through the API,
and schemathesis runs over a served API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
from litestar.testing import AsyncTestClient

from controlplane.schemas.alembic_runner import tenant_scripts
from controlplane.settings import ProvisioningSettings
from tests.conftest import ADMIN_TOKEN

Client = AsyncTestClient[Any]

#: The tenant schema's head revision: what every new tenant is at.
HEAD = tenant_scripts(ProvisioningSettings()).head()


def registry_snapshot(control_dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every registry table (the ``public`` schema of the control database) but the audit
    trail and the signing keys, which record attempts rather than state."""
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename NOT IN ('platform_audit', 'signing_keys') ORDER BY 1"
            )
        ]
        return {
            table: sorted(map(tuple, conn.execute(f'SELECT * FROM "{table}"').fetchall()), key=repr)  # noqa: S608
            for table in tables
        }


def tenant_databases(admin_dsn: str) -> set[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body


async def create(client: Client, slug: str, tier: str = "starter", name: str | None = None) -> dict[str, Any]:
    response = await client.post("/admin/tenants", json={"name": name or slug.title(), "slug": slug, "tier": tier})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def st_run(url: str, cwd: Path, max_examples: int, headers: dict[str, str], *options: str) -> tuple[int, str]:
    """``st run`` over the served API's OpenAPI schema, with the suite's fixed settings (seeded, one
    worker, every phase, no 5xx allowed); its exit code and output."""
    st = str(Path(sys.executable).parent / "st")
    command = [
        st,
        *(o for o in options if o.startswith("--config-file=")),  # a global option: before "run"
        "run",
        f"{url}/schema/openapi.json",
        "--checks=not_a_server_error",
        *(f"--header={name}: {value}" for name, value in headers.items()),
        f"--max-examples={max_examples}",
        "--phases=examples,coverage,fuzzing,stateful",
        "--generation-allow-x00=true",
        "--workers=1",
        "--seed=20251128",
        "--generation-database=none",
        "--request-timeout=30",
        "--no-color",
        "--warnings=off",
        *(o for o in options if not o.startswith("--config-file=")),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    return result.returncode, result.stdout + result.stderr


def run_schemathesis(url: str, cwd: Path, max_examples: int, *selection: str) -> str:
    """``st run`` over the admin API with the automation token: no 5xx allowed; returns its output."""
    code, output = st_run(url, cwd, max_examples, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, *selection)
    assert code == 0, output
    assert "No issues found" in output, output
    return output


def selected(output: str) -> int:
    """How many operations a schemathesis run selected."""
    match = re.search(r"Selected: (\d+)/", output)
    assert match, output
    return int(match[1])


#: Every admin operation: (method, path). The OpenAPI test checks this list is complete.
ADMIN_ROUTES = [
    ("GET", "/admin/tenants"),
    ("POST", "/admin/tenants"),
    ("GET", "/admin/tenants/acme"),
    ("PATCH", "/admin/tenants/acme"),
    ("DELETE", "/admin/tenants/acme"),
    ("POST", "/admin/tenants/acme/suspend"),
    ("POST", "/admin/tenants/acme/resume"),
    ("GET", "/admin/servers"),
    ("POST", "/admin/servers"),
    ("POST", "/admin/servers/default/drain"),
    ("POST", "/admin/servers/default/activate"),
    ("PUT", "/admin/servers/default/dsn"),
    ("PATCH", "/admin/servers/{name}"),
    ("GET", "/admin/servers/default/pgbouncer"),
    ("PUT", "/admin/servers/default/pgbouncer"),
    ("DELETE", "/admin/servers/default/pgbouncer"),
    ("GET", "/admin/servers/default/replicas"),
    ("PUT", "/admin/servers/default/replicas"),
    ("GET", "/admin/servers/default/drain"),
    ("GET", "/admin/fleet/rebalance"),
    ("POST", "/admin/fleet/rebalance"),
    ("POST", "/admin/tenants/acme/move"),
    ("GET", "/admin/tenants/acme/moves"),
    ("POST", "/admin/reconcile"),
    ("GET", "/admin/migrations"),
    ("GET", "/admin/pools"),
    ("GET", "/admin/audit"),
    ("POST", "/admin/tenants/acme/impersonate"),
    ("GET", "/admin/tenants/acme/sso"),
    ("PUT", "/admin/tenants/acme/sso"),
    ("DELETE", "/admin/tenants/acme/sso"),
    ("GET", "/admin/tenants/acme/health"),
    ("GET", "/admin/tenants/acme/slow-queries"),
    ("POST", "/admin/tenants/acme/maintenance"),
    ("POST", "/admin/usage/collect"),
    ("GET", "/admin/alerts"),
    ("GET", "/admin/capacity"),
    ("PUT", "/admin/tenants/acme/quotas"),
    ("POST", "/admin/tenants/acme/quotas/storage-expansion"),
    ("GET", "/admin/tenants/acme/usage"),
    ("GET", "/admin/tenants/acme/performance"),
    ("GET", "/admin/billing/usage"),
    ("POST", "/admin/billing/usage/1/retry"),
    ("GET", "/admin/tenants/acme/billing"),
    ("POST", "/admin/tenants/acme/billing/plan"),
    ("POST", "/admin/tenants/acme/billing/sync"),
    ("GET", "/admin/deletion-certificates"),
    ("GET", "/admin/deletion-certificates/{tenant}"),
    ("POST", "/admin/tenants/acme/backups"),
    ("GET", "/admin/tenants/acme/backups"),
    ("GET", "/admin/backups/{backup_id}"),
    ("POST", "/admin/tenants/acme/restore"),
    ("POST", "/admin/tenants/acme/rollback"),
    ("POST", "/admin/backups/{backup_id}/verify"),
    ("GET", "/admin/backups/{backup_id}/verifications"),
    ("POST", "/admin/tenants/acme/import"),
    ("GET", "/admin/storage/hygiene"),
    ("POST", "/admin/storage/hygiene/run"),
]
