"""Storage hygiene as operators see it: ``/admin/storage/hygiene`` (findings, runs, audit, admin only),
``/metrics`` (counters and the last run's gauges, the job registered) and ``cardvault storage check``."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane import db
from controlplane.hygiene.service import HYGIENE_LOCK
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from controlplane.storage import new_key
from tests.integration.auth_support import create_tenant
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.hygiene_support import (
    add_image_row,
    area,
    control_rows,
    in_quarantine,
    png,
    put_object,
    storage_of,
)

Client = AsyncTestClient[Any]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_findings_runs_audit_and_metrics_over_http(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    storage = storage_of(platform)
    orphan_data = png()
    orphan = await put_object(storage, acme.id, orphan_data)
    lost = new_key("ef" * 32, "png")
    await add_image_row(platform, "acme", lost, png())

    # Admin only: the tenant's own admin (or no credential) is refused, and nothing runs.
    for headers in (acme.auth, {"Authorization": ""}):
        for method, path in (("GET", "/admin/storage/hygiene"), ("POST", "/admin/storage/hygiene/run")):
            response = await client.request(method, path, headers=headers)
            assert response.status_code in (401, 403), (path, response.text)
    assert area(storage, acme.id) == {orphan: orphan_data}

    empty = (await client.get("/admin/storage/hygiene")).json()
    assert (empty["quarantine_files"], empty["missing_files"], empty["quarantined"]) == (0, 0, [])

    dry = await client.post("/admin/storage/hygiene/run?fix=false")
    assert dry.status_code == 200, dry.text
    assert dry.json()["tenants"][0]["orphan_keys"] == [orphan] and dry.json()["fix"] is False
    assert area(storage, acme.id) == {orphan: orphan_data}

    run = await client.post("/admin/storage/hygiene/run?tenant=acme")
    assert run.status_code == 200, run.text
    (scan,) = run.json()["tenants"]
    assert (scan["slug"], scan["quarantined"], scan["missing"], scan["missing_keys"]) == ("acme", 1, 1, [lost])
    assert in_quarantine(storage, acme.id) == {orphan: orphan_data}

    findings = (await client.get("/admin/storage/hygiene?tenant=acme")).json()
    assert [(q["key"], q["reason"], q["bytes"]) for q in findings["quarantined"]] == [
        (orphan, "orphan", len(orphan_data))
    ]
    assert [m["key"] for m in findings["missing"]] == [lost] and findings["missing"][0]["resolve_after"]
    assert (findings["quarantine_files"], findings["missing_files"]) == (1, 1)
    unknown = await client.get("/admin/storage/hygiene?tenant=nobody")
    assert unknown.status_code == 404 and unknown.json()["error"] == "tenant_not_found"
    assert (await client.post("/admin/storage/hygiene/run?tenant=nobody")).status_code == 404

    audit, refused = await control_rows(
        platform, "SELECT * FROM platform_audit WHERE action = 'storage.hygiene' ORDER BY id"
    )  # the report-only run changes nothing and is not audited
    assert audit["outcome"] == "succeeded" and audit["tenant_slug"] == "acme"
    assert audit["details"]["summary"].startswith("1 area(s): 1 orphan(s), 1 quarantined")
    assert (refused["outcome"], refused["tenant_slug"]) == ("failed", "nobody")

    # A whole-fleet run publishes the gauges; the job is registered on every replica (stats from start).
    assert (await client.post("/admin/storage/hygiene/run")).status_code == 200
    metrics = samples((await client.get("/metrics")).text)
    assert metrics[("cardvault_storage_hygiene_quarantined_total", ())] == 1
    assert metrics[("cardvault_storage_hygiene_missing_found_total", ())] == 1
    assert metrics[("cardvault_storage_hygiene_missing_files", ())] == 1
    assert metrics[("cardvault_storage_hygiene_quarantine_bytes", ())] == len(orphan_data)
    assert ("cardvault_job_runs_total", (("job", "storage_hygiene"),)) in metrics
    assert ("cardvault_job_runs_total", (("job", "flush_bytes_served"),)) in metrics


async def test_a_run_while_another_is_going_is_409(client: Client, platform: Platform) -> None:
    async with platform.control.connection() as conn:
        assert await db.try_advisory_lock(conn, HYGIENE_LOCK)
        try:
            response = await client.post("/admin/storage/hygiene/run")
        finally:
            await db.advisory_unlock(conn, HYGIENE_LOCK)
    assert response.status_code == 409 and response.json()["error"] == "operation_in_progress"


async def test_storage_check_command(
    service: TenantService, platform: Platform, settings: Settings, control_dsn: str, tenant_template_name: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    storage = storage_of(platform)
    orphan = await put_object(storage, tenant.id, png())
    env = cli_env(control_dsn, tenant_template_name, settings.data_dir)

    def cardvault(*args: str) -> Any:
        return asyncio.to_thread(run_cli, env, *args)

    report = await cardvault("storage", "check")
    assert report.code == 1, report.stderr  # findings, not fixed
    header, row, *_ = report.stdout.splitlines()
    assert header.split()[:4] == ["TENANT", "OBJECTS", "ROWS", "ORPHANS"]
    assert row.split()[:4] == ["acme", "1", "0", "1"]
    assert "report only" in report.stdout and list(area(storage, tenant.id)) == [orphan]

    fixed = ok(await cardvault("storage", "check", "acme", "--fix", "--json")).json()
    assert fixed["fix"] is True and fixed["tenants"][0]["quarantined"] == 1 and fixed["quarantine_files"] == 1
    assert area(storage, tenant.id) == {} and list(in_quarantine(storage, tenant.id)) == [orphan]
