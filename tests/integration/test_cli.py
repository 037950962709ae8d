"""The ``cardvault`` command, run as operators run it: a subprocess with ``CARDVAULT_*`` variables.

Tenant lifecycle commands (``--json`` and tables), the ``--yes`` guard of destructive commands, domain
errors as JSON on stderr with a non-zero exit, servers, reconcile and migrations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.harness import LocalClusterHandle
from tests.integration.admin_support import HEAD, registry_snapshot, tenant_databases
from tests.integration.cli_support import Cli, Result, cli_env, ok, refused, run_cli


@pytest.fixture
def cli(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Cli:
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")

    def call(*args: str, stdin: str | None = None) -> Result:
        return run_cli(env, *args, stdin=stdin)

    return call


# -- tenants ----------------------------------------------------------------------------------------


def test_tenant_lifecycle_commands(cli: Cli, control_dsn: str, pg_admin_dsn: str) -> None:
    created = ok(cli("tenants", "create", "--name", "Acme Cards", "--slug", "acme", "--tier", "professional", "--json"))
    tenant = created.json()
    assert tenant["slug"] == "acme" and tenant["name"] == "Acme Cards" and tenant["status"] == "active"
    assert tenant["subscription_tier"] == "professional" and tenant["schema_revision"] == HEAD
    assert tenant["database_name"] in tenant_databases(pg_admin_dsn)
    ok(cli("tenants", "create", "--name", "Beta", "--slug", "beta"))  # human output, default tier

    listed = ok(cli("tenants", "list", "--json")).json()
    assert [t["slug"] for t in listed] == ["acme", "beta"]
    assert listed[0] == tenant
    assert [t["slug"] for t in ok(cli("tenants", "list", "--tier", "starter", "--json")).json()] == ["beta"]

    table = ok(cli("tenants", "list")).stdout.splitlines()
    assert table[0].split() == [
        "SLUG",
        "NAME",
        "STATUS",
        "SUBSCRIPTION_TIER",
        "SERVER_NAME",
        "SCHEMA_REVISION",
        "DATABASE_NAME",
    ]
    assert table[1].split()[0] == "acme" and tenant["database_name"] in table[1]
    assert len(table) == 3

    shown = ok(cli("tenants", "show", "acme", "--json")).json()
    assert shown["tenant"] == tenant
    assert {q["quota_type"]: q["quota_limit"] for q in shown["quotas"]}["users"] == 10
    assert [(o["kind"], o["state"]) for o in shown["operations"]] == [("provision", "succeeded")]
    human = ok(cli("tenants", "show", "acme")).stdout
    assert "slug: acme" in human and "quotas:" in human and "QUOTA_TYPE" in human and "recent operations:" in human

    updated = ok(cli("tenants", "update", "acme", "--name", "Acme Inc", "--tier", "enterprise", "--json")).json()
    assert updated["name"] == "Acme Inc" and updated["subscription_tier"] == "enterprise"
    renamed = ok(cli("tenants", "update", "acme", "--new-slug", "acme-inc", "--json")).json()
    assert renamed["slug"] == "acme-inc" and renamed["database_name"] == tenant["database_name"]

    rekeyed = ok(cli("tenants", "rekey-roles", "--json")).json()
    assert rekeyed == [{"slug": "acme-inc", "outcome": "rekeyed"}, {"slug": "beta", "outcome": "rekeyed"}]
    assert ok(cli("tenants", "rekey-roles", "beta")).stdout.split() == ["SLUG", "OUTCOME", "beta", "rekeyed"]
    assert ok(cli("tenants", "suspend", "acme-inc", "--json")).json()["status"] == "suspended"
    assert ok(cli("tenants", "resume", "acme-inc", "--json")).json()["status"] == "active"

    # Destructive commands refuse without --yes when there is no terminal to type the slug on.
    before = registry_snapshot(control_dsn)
    for args in (("delete", "acme-inc"), ("delete", "acme-inc", "--now"), ("purge", "acme-inc")):
        body = refused(cli("tenants", *args), "confirmation_required")
        assert "--yes" in body["detail"]
        # Typing the slug back needs a terminal: piped input is not a confirmation.
        refused(cli("tenants", *args, stdin="acme-inc\n"), "confirmation_required")
    assert registry_snapshot(control_dsn) == before
    assert tenant["database_name"] in tenant_databases(pg_admin_dsn)

    deleted = ok(cli("tenants", "delete", "acme-inc", "--yes", "--json")).json()
    assert deleted["status"] == "deleting" and deleted["delete_after"] is not None
    assert tenant["database_name"] in tenant_databases(pg_admin_dsn)  # soft: kept for the grace period
    assert ok(cli("tenants", "resume", "acme-inc", "--json")).json()["status"] == "active"

    purged = ok(cli("tenants", "delete", "acme-inc", "--now", "--yes", "--json")).json()
    assert purged == {"slug": "acme-inc", "status": "purged"}
    assert tenant["database_name"] not in tenant_databases(pg_admin_dsn)

    beta_db = listed[1]["database_name"]
    assert ok(cli("tenants", "purge", "beta", "--yes")).stdout.strip() == "tenant beta purged"
    assert beta_db not in tenant_databases(pg_admin_dsn)
    assert ok(cli("tenants", "list", "--json")).json() == []
    refused(cli("tenants", "show", "beta"), "tenant_not_found")


def test_bad_input_is_a_json_error_and_changes_nothing(cli: Cli, control_dsn: str, pg_admin_dsn: str) -> None:
    ok(cli("tenants", "create", "--name", "Acme", "--slug", "acme"))
    ok(cli("tenants", "create", "--name", "Beta", "--slug", "beta"))
    ok(cli("tenants", "suspend", "beta"))
    before, databases = registry_snapshot(control_dsn), tenant_databases(pg_admin_dsn)

    cases: list[tuple[tuple[str, ...], str]] = [
        (("tenants", "create", "--name", "X", "--slug", "Not A Slug"), "invalid_slug"),
        (("tenants", "create", "--name", "X", "--slug", "new-one", "--tier", "gold"), "invalid_tier"),
        (("tenants", "create", "--name", "X", "--slug", "acme"), "slug_taken"),
        (("tenants", "create", "--name", "  ", "--slug", "new-one"), "validation_failed"),
        (("tenants", "show", "nope"), "tenant_not_found"),
        (("tenants", "update", "acme", "--new-slug", "Bad_Slug"), "invalid_slug"),
        (("tenants", "update", "acme", "--new-slug", "beta"), "slug_taken"),
        (("tenants", "suspend", "beta"), "invalid_state"),
        (("tenants", "delete", "nope", "--yes"), "tenant_not_found"),
        (("tenants", "purge", "nope", "--yes"), "tenant_not_found"),
        (("servers", "add", "Bad Name", "host=127.0.0.1 port=1 user=nobody dbname=postgres"), "validation_failed"),
        (("servers", "add", "other", "host=127.0.0.1 port=1"), "validation_failed"),
        (("servers", "drain", "nope"), "server_not_found"),
        (("servers", "set-dsn", "nope", "host=127.0.0.1 port=1 user=nobody dbname=postgres"), "server_not_found"),
        (("servers", "set-dsn", "default", "host=127.0.0.1 port=1"), "validation_failed"),
    ]
    # Independent and each refused before any change: run them side by side.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: cli(*args), [args for args, _ in cases]))
    for (args, code), result in zip(cases, results, strict=True):
        assert result.code == 1, (args, result)
        assert result.stdout == "", (args, result.stdout)
        assert result.error()["error"] == code, (args, result.stderr)
    assert registry_snapshot(control_dsn) == before
    assert tenant_databases(pg_admin_dsn) == databases


def test_configuration_errors_exit_2_with_json(tenant_template_name: str, tmp_path: Path) -> None:
    env = cli_env("", tenant_template_name, tmp_path / "empty")
    del env["CARDVAULT_DATABASE_URL"]
    result = run_cli(env, "tenants", "list")
    assert result.code == 2
    assert result.error()["error"] == "config_error"


# -- servers, reconcile, migrations ------------------------------------------------------------------


def test_servers_commands(cli: Cli, pg_admin_dsn: str, extra_cluster: Callable[[], LocalClusterHandle]) -> None:
    table = ok(cli("servers", "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "TENANTS", "TEMPLATE_REVISION", "DSN_DISPLAY"]
    assert table[1].split()[:3] == ["default", "active", "0"]
    # The control database's own server under a second name: the same server, refused.
    assert (
        "already registered as 'default'"
        in refused(cli("servers", "add", "again", pg_admin_dsn), "server_exists")["detail"]
    )

    second = extra_cluster()
    added = ok(cli("servers", "add", "second", second.dsn, "--json")).json()
    assert added["name"] == "second" and added["status"] == "active" and added["tenants"] == 0
    with psycopg.connect(second.dsn) as conn:
        password = conn.info.password
        conn.execute("CREATE ROLE rotating SUPERUSER LOGIN PASSWORD 'first-pw'")
    assert password and password not in added["dsn_display"]
    refused(cli("servers", "add", "second", second.dsn), "server_exists")

    # A new DSN from stdin (the password stays out of the process list); it must reach the same server.
    rotating = psycopg.conninfo.make_conninfo(second.dsn, user="rotating", password="first-pw")
    changed = ok(cli("servers", "set-dsn", "second", "--json", stdin=rotating + "\n")).json()
    assert "user=rotating" in changed["dsn_display"] and "first-pw" not in changed["dsn_display"]
    assert changed["system_identifier"] == added["system_identifier"]
    refused(cli("servers", "set-dsn", "second", pg_admin_dsn), "server_mismatch")
    assert ok(cli("servers", "list", "--json")).json()[1]["dsn_display"] == changed["dsn_display"]

    assert ok(cli("servers", "drain", "second", "--json")).json()["status"] == "draining"
    servers = ok(cli("servers", "list", "--json")).json()
    assert [(s["name"], s["status"]) for s in servers] == [("default", "active"), ("second", "draining")]
    assert ok(cli("servers", "activate", "second", "--json")).json()["status"] == "active"


def test_reconcile_clean_then_unclean(cli: Cli, pg_admin_dsn: str) -> None:
    ok(cli("tenants", "create", "--name", "Acme", "--slug", "acme"))
    assert ok(cli("reconcile")).stdout.strip() == "clean: registry and servers agree"
    assert ok(cli("reconcile", "--json")).json() == {"findings": [], "fixed": False}

    # The tenant's database disappears behind the control plane's back.
    database = ok(cli("tenants", "show", "acme", "--json")).json()["tenant"]["database_name"]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
    unclean = cli("reconcile")
    assert unclean.code == 1
    assert unclean.stdout.splitlines()[0].split() == ["KIND", "SERVER", "SUBJECT", "ACTION", "DETAIL"]
    assert "missing_database" in unclean.stdout and "acme" in unclean.stdout
    fixed = ok(cli("reconcile", "--fix", "--json")).json()
    assert [(f["kind"], f["subject"]) for f in fixed["findings"]] == [("missing_database", "acme")]
    assert ok(cli("tenants", "show", "acme", "--json")).json()["tenant"]["status"] == "broken"


def test_migrate_status_and_tenants(cli: Cli) -> None:
    for slug in ("acme", "beta"):
        ok(cli("tenants", "create", "--name", slug, "--slug", slug))
    status = ok(cli("migrate", "status", "--json")).json()
    assert status == {"head": HEAD, "revisions": [{"revision": HEAD, "tenants": 2, "failed": 0}], "failures": []}
    human = ok(cli("migrate", "status")).stdout.splitlines()
    assert human[0] == f"head: {HEAD}"
    assert human[1].split() == ["REVISION", "TENANTS", "FAILED"] and human[2].split() == [HEAD, "2", "0"]

    run = ok(cli("migrate", "tenants", "--concurrency", "2"))
    assert run.stdout.strip() == f"head {HEAD}: 2 ok, 0 failed"
    assert "migrate: finished 2/2: 2 ok, 0 failed" in run.stderr
    # --json, --dry-run, --only-failed and a failing tenant: tests/integration/migrations/.


# -- users ---------------------------------------------------------------------------------------


def _tenant_users(control_dsn: str, slug: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(control_dsn) as conn:
        row = conn.execute("SELECT database_name FROM tenants WHERE slug = %s", (slug,)).fetchone()
    assert row is not None
    with psycopg.connect(psycopg.conninfo.make_conninfo(control_dsn, dbname=row[0])) as conn:
        return conn.execute(
            "SELECT email, tenant_role, password_hash LIKE '$argon2id$%' FROM users ORDER BY id"
        ).fetchall()


def test_tenant_with_its_admin_and_users_from_the_cli(cli: Cli, control_dsn: str) -> None:
    password = "a password long enough"
    ok(
        cli(
            "tenants",
            "create",
            "--name",
            "Acme",
            "--slug",
            "acme",
            "--tier",
            "professional",
            "--admin-email",
            "boss@acme.test",
            stdin=password,
        )
    )
    ok(
        cli(
            "users",
            "create",
            "--tenant",
            "acme",
            "--email",
            "Ann@acme.test",
            "--role",
            "collection_manager",
            stdin=password + "\n",
        )
    )
    assert _tenant_users(control_dsn, "acme") == [
        ("boss@acme.test", "tenant_admin", True),
        ("Ann@acme.test", "collection_manager", True),
    ]
    listed = ok(cli("users", "list", "--tenant", "acme", "--json")).json()
    assert [u["email"] for u in listed] == ["boss@acme.test", "Ann@acme.test"]
    assert "password" not in json.dumps(listed)
    refused(cli("users", "create", "--tenant", "acme", "--email", "ann@ACME.test", stdin=password), "email_taken")
    refused(cli("users", "create", "--tenant", "acme", "--email", "x@acme.test", stdin="short"), "validation_failed")
    refused(cli("users", "create", "--tenant", "nope", "--email", "x@acme.test", stdin=password), "tenant_not_found")
    # The starter tier has room for one user: its admin.
    ok(cli("tenants", "create", "--name", "Small", "--slug", "small", "--admin-email", "me@small.test", stdin=password))
    refused(cli("users", "create", "--tenant", "small", "--email", "two@small.test", stdin=password), "quota_exceeded")
    assert [email for email, *_ in _tenant_users(control_dsn, "small")] == ["me@small.test"]


def test_maintenance_command(cli: Cli) -> None:
    ok(cli("tenants", "create", "--name", "Acme", "--slug", "acme"))
    ok(cli("tenants", "create", "--name", "Beta", "--slug", "beta"))
    (one,) = ok(cli("maintenance", "--tenant", "acme", "--vacuum", "--json")).json()
    assert (one["tenant"], one["action"], one["ok"]) == ("acme", "vacuum", True)
    every = ok(cli("maintenance", "--json")).json()
    assert sorted(r["tenant"] for r in every) == ["acme", "beta"] and all(r["action"] == "analyze" for r in every)
    refused(cli("maintenance", "--tenant", "nope"), "tenant_not_found")
