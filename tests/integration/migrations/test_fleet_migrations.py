"""Tenant schema migrations across the fleet (``TenantMigrations`` and ``cardvault migrate tenants``).

Each test copies ``tenant_schema/`` and adds a revision on top of its head (a column, a table, and a
guard that fails when a marker row exists in the tenant's database). Tenants are provisioned at the
current head from a template private to the test (the session's shared template is never upgraded),
then migrated with the copy.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from controlplane.migrations.service import TenantMigrations
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.settings import Settings
from tests.integration.admin_support import registry_snapshot
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.migrations.migration_support import (
    BASE,
    MARKER,
    NEXT,
    execute_in,
    has_table,
    registry_rows,
    revision_of,
    template_revision,
    tenant_role_dsn,
    use_new_schema_as_tenant,
)

# -- the service ----------------------------------------------------------------------------------------


async def test_templates_and_every_tenant_reach_the_new_head(
    tenants_v1: dict[str, Tenant],
    settings_v2: Settings,
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,
    tenant_template_name: str,
) -> None:
    shared_before = tenant_databases_revisions(pg_admin_dsn, [tenant_template_name])
    async with Platform.open(settings_v2, migrate=False) as platform:
        migrations = TenantMigrations(platform)
        report = await migrations.run(concurrency=2)

        assert report.head == NEXT and report.templates == {"default": NEXT}
        assert sorted((o.target.slug, o.ok, o.revision) for o in report.outcomes) == [
            ("alpha", True, NEXT),
            ("bravo", True, NEXT),
            ("charlie", True, NEXT),
        ]
        assert report.failures == []
        # alembic rendered the one pending revision once; every tenant ran the rendered SQL.
        assert platform.tenant_scripts.renders == 1
        assert revision_of(pg_admin_dsn, private_template) == NEXT
        assert template_revision(control_dsn) == NEXT
        for tenant in tenants_v1.values():
            assert revision_of(pg_admin_dsn, tenant.database_name) == NEXT
            assert has_table(pg_admin_dsn, tenant.database_name, "card_gradings")
        assert registry_rows(control_dsn) == {slug: (NEXT, None) for slug in tenants_v1}
        # The session's shared template was left alone.
        assert tenant_databases_revisions(pg_admin_dsn, [tenant_template_name]) == shared_before

        # Privileges were granted again after the upgrade: the tenant role uses the new table.
        use_new_schema_as_tenant(await tenant_role_dsn(platform, tenants_v1["alpha"], pg_admin_dsn))

        # A second run finds nothing to do; a new tenant is cloned at NEXT and can use it at once.
        again = await migrations.run(concurrency=2)
        assert [o.revision for o in again.outcomes] == [NEXT] * 3 and again.failures == []
        service = TenantService(platform)
        delta = await service.create(name="Delta", slug="delta", tier="starter")
        assert delta.schema_revision == NEXT
        assert revision_of(pg_admin_dsn, delta.database_name) == NEXT
        use_new_schema_as_tenant(await tenant_role_dsn(platform, delta, pg_admin_dsn))

        status = await migrations.status()
        assert status == {"head": NEXT, "revisions": [{"revision": NEXT, "tenants": 4, "failed": 0}], "failures": []}
    with psycopg.connect(control_dsn) as conn:
        migrate_ops = conn.execute(
            "SELECT tenant_slug, state FROM tenant_operations WHERE kind = 'migrate' ORDER BY id"
        ).fetchall()
    assert sorted(migrate_ops) == sorted([(slug, "succeeded") for slug in tenants_v1] * 2)


def tenant_databases_revisions(admin_dsn: str, names: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    with psycopg.connect(admin_dsn) as conn:
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))}
    for name in names:
        found[name] = revision_of(admin_dsn, name) if name in existing else None
    return found


# -- the command, with one tenant failing ----------------------------------------------------------------


def test_cli_one_failing_tenant_then_only_failed(
    tenants_v1: dict[str, Tenant],
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,
    schema_v2: Path,
    tmp_path: Path,
) -> None:
    env = cli_env(control_dsn, private_template, tmp_path / "data", CARDVAULT_TENANT_SCHEMA_DIR=str(schema_v2))
    bravo = tenants_v1["bravo"].database_name
    execute_in(pg_admin_dsn, bravo, "INSERT INTO manufacturers (name) VALUES (%s)", (MARKER,))

    # Dry run: lists what is pending for each tenant and changes nothing (not even the template).
    before = registry_snapshot(control_dsn)
    dry = run_cli(env, "migrate", "tenants", "--dry-run")
    assert dry.code == 0, dry.stderr
    assert sorted(dry.stdout.splitlines()[:-1]) == [f"alpha: {NEXT}", f"bravo: {NEXT}", f"charlie: {NEXT}"]
    assert dry.stdout.splitlines()[-1] == f"head {NEXT}: 3 ok, 0 failed"
    dry_json = run_cli(env, "migrate", "tenants", "--dry-run", "--json")
    assert dry_json.code == 0 and dry_json.json()["dry_run"] is True and dry_json.json()["templates"] == {}
    assert registry_snapshot(control_dsn) == before
    assert revision_of(pg_admin_dsn, private_template) == BASE
    assert {revision_of(pg_admin_dsn, t.database_name) for t in tenants_v1.values()} == {BASE}

    # The real run: bravo fails alone.
    run = run_cli(env, "migrate", "tenants", "--concurrency", "2")
    assert run.code == 1, run.stderr
    assert run.stdout.strip() == f"head {NEXT}: 2 ok, 1 failed"
    failed_lines = [line for line in run.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed_lines) == 1 and failed_lines[0].startswith("FAILED bravo:") and MARKER in failed_lines[0]
    assert "migrate: finished 3/3: 2 ok, 1 failed" in run.stderr  # progress on stderr
    assert revision_of(pg_admin_dsn, private_template) == NEXT
    assert revision_of(pg_admin_dsn, bravo) == BASE
    assert not has_table(pg_admin_dsn, bravo, "card_gradings")  # the failed revision left nothing
    for slug in ("alpha", "charlie"):
        assert revision_of(pg_admin_dsn, tenants_v1[slug].database_name) == NEXT
    rows = registry_rows(control_dsn)
    assert rows["alpha"] == rows["charlie"] == (NEXT, None)
    assert rows["bravo"][0] == BASE and MARKER in rows["bravo"][1]

    status = run_cli(env, "migrate", "status", "--json")
    assert status.code == 0
    assert status.json()["head"] == NEXT
    assert status.json()["revisions"] == [
        {"revision": BASE, "tenants": 1, "failed": 1},
        {"revision": NEXT, "tenants": 2, "failed": 0},
    ]
    [failure] = status.json()["failures"]
    assert failure["slug"] == "bravo" and failure["revision"] == BASE and MARKER in failure["error"]
    human = run_cli(env, "migrate", "status").stdout
    assert "failures:" in human and "SLUG" in human and "bravo" in human

    # Fixed by hand; --only-failed migrates bravo and nobody else.
    execute_in(pg_admin_dsn, bravo, "DELETE FROM manufacturers WHERE name = %s", (MARKER,))
    retry = run_cli(env, "migrate", "tenants", "--only-failed", "--json")
    assert retry.code == 0, retry.stderr
    report = retry.json()
    assert (report["tenants"], report["succeeded"], report["failed"]) == (1, 1, [])
    assert "migrate: finished 1/1: 1 ok, 0 failed" in retry.stderr
    assert revision_of(pg_admin_dsn, bravo) == NEXT and has_table(pg_admin_dsn, bravo, "card_gradings")
    assert registry_rows(control_dsn) == {slug: (NEXT, None) for slug in tenants_v1}
    with psycopg.connect(control_dsn) as conn:
        ops = conn.execute(
            "SELECT tenant_slug, state FROM tenant_operations WHERE kind = 'migrate' ORDER BY id"
        ).fetchall()
    assert sorted(ops) == sorted(
        [("alpha", "succeeded"), ("charlie", "succeeded"), ("bravo", "failed"), ("bravo", "succeeded")]
    )
    final = run_cli(env, "migrate", "status", "--json").json()
    assert final["revisions"] == [{"revision": NEXT, "tenants": 3, "failed": 0}] and final["failures"] == []
