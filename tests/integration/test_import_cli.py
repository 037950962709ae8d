"""``cardvault import-sqlite SLUG FILE [--uploads DIR] [--dry-run] [--json]`` run as operators run it.

Proven here: a dry run prints the report and writes nothing; the import prints what it took, the ids,
the users who must reset their password and everything it could not take, and the rows are there; a
failed import (a quota too small) exits 1 with the reason as JSON on stderr and changes nothing; every
run is in the platform audit as ``cli:<os user>``.
"""

from __future__ import annotations

from pathlib import Path

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from tests.integration.auth_support import tenant_rows
from tests.integration.cli_support import cli_env, ok, refused, run_cli
from tests.integration.tenant_support import fetch
from tests.legacy_support import dirty_installation


async def test_import_sqlite_command(
    platform: Platform, service: TenantService, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    legacy = dirty_installation(tmp_path / "legacy")
    await service.create(name="Small", slug="small", tier="starter")  # 1 user, 1,000 cards
    await service.create(name="Acme", slug="acme", tier="enterprise")
    env = cli_env(control_dsn, tenant_template_name, platform.settings.data_dir)
    args = (str(legacy.path), "--uploads", str(legacy.uploads))

    dry = ok(run_cli(env, "import-sqlite", "acme", *args, "--dry-run", "--json")).json()
    assert dry["dry_run"] is True and dry["imported"]["cards"] == 7 and dry["issue_counts"]["bad_year"] == 5
    assert await tenant_rows(platform, "acme", "SELECT count(*) AS n FROM users") == [{"n": 0}]

    out = ok(run_cli(env, "import-sqlite", "acme", *args)).stdout
    assert out.startswith("acme: imported in ")
    lines = out.splitlines()
    assert ["cards", "7", "kept"] in [line.split() for line in lines]
    assert any(line.split()[:2] == ["3", "weird@legacy.test"] for line in lines)  # must reset the password
    assert any(line.split() == ["orphan_reference", "6"] for line in lines)
    assert any("condition_rounded_down" in line and "EX-MT" in line for line in lines)
    assert await tenant_rows(platform, "acme", "SELECT count(*) AS n FROM cards") == [{"n": 7}]

    failed = refused(run_cli(env, "import-sqlite", "small", *args), "quota_exceeded")
    assert failed["quota"] == "users" and "nothing was imported" in failed["detail"]
    assert await tenant_rows(platform, "small", "SELECT count(*) AS n FROM users") == [{"n": 0}]

    audit = await fetch(
        control_dsn,
        "SELECT tenant_slug, outcome, actor, details FROM platform_audit WHERE action = 'tenant.import' ORDER BY id",
    )
    assert [(a["tenant_slug"], a["outcome"], a["details"]["dry_run"]) for a in audit] == [
        ("acme", "succeeded", True),
        ("acme", "succeeded", False),
        ("small", "failed", False),
    ]
    assert all(a["actor"].startswith("cli:") for a in audit)
    assert audit[2]["details"]["error"] == "quota_exceeded"
