"""Schemathesis against the tenant API of a real ``cardvault serve``: no request answers 5xx.

Every card operation under ``/t/{tenant_slug}/api/...`` (cards and their images, players, teams,
manufacturers) gets property-based requests, valid and invalid, plus stateful sequences. The path
parameter ``tenant_slug`` is pinned (schemathesis ``[parameters]`` in a ``schemathesis.toml``) to a
provisioned tenant, and every request carries the access token of that tenant's admin (``-H
"Authorization: Bearer ..."``), so that requests get past routing and authentication to the real
handlers and the tenant's own database; a few rows of each kind are seeded so that small ids name real
rows. Examples are bounded so the run stays well under a minute.

The account operations under the same prefix (``/me``, ``/users``, ``/api-keys``, ``/settings``,
``/audit``) are left out: fuzzed as the same admin, they end the admin's own session (``DELETE
/me/sessions/{id}``, disabling users) and every later request would stop at 401. After the run, the
admin's token must still be good, i.e. the requests were authenticated to the end.

When schemathesis reports a failure, the assertion message carries its output and the server's log
(which holds the traceback of the 5xx).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from controlplane.auth.passwords import Passwords
from controlplane.settings import AuthSettings
from tests.conftest import Served
from tests.integration.admin_support import st_run
from tests.integration.tenant_support import create_tenant_as_admin_sync

SLUG = "fuzz-shop"
#: Tenant API operations: cards (list, create, get, patch, delete; image get, put, delete, signed link) and
#: five each (list, create, get, patch, delete) for players, teams and manufacturers.
TENANT_OPERATIONS = 9 + 3 * 5
#: The paths of those operations (schemathesis ``--include-path-regex``).
FUZZED_PATHS = r"^/t/\{tenant_slug\}/api/(cards|players|teams|manufacturers)(/|$)"
#: The accounts, audit and privacy operations: /me (4 + delete session, export, exports), /users (5, export,
#: erase), /api-keys (3), /settings (2), /audit (1), /exports (4). Fuzzed with an impersonation token: it
#: has no user row or session the fuzzer could disable, revoke or log out, so every request is
#: authenticated to the end.
ACCOUNT_OPERATIONS = 7 + 7 + 3 + 2 + 1 + 4
ACCOUNT_PATHS = r"^/t/\{tenant_slug\}/api/(me|users|api-keys|settings|audit|exports)(/|$)"


def provision(url: str) -> dict[str, str]:
    """The fuzzed tenant, with rows of every kind so that ids 1-3 exist; the ``Authorization`` header of
    its admin."""
    with httpx.Client(base_url=url, timeout=30) as http:
        auth = create_tenant_as_admin_sync(http, SLUG, tier="enterprise", name="Fuzz")
        api = f"/t/{SLUG}/api"
        for i in range(1, 4):
            for path, body in (
                ("manufacturers", {"name": f"Maker {i}"}),
                ("teams", {"name": f"Team {i}"}),
                ("players", {"first_name": f"First {i}", "last_name": f"Last {i}", "team_id": i}),
                ("cards", {"cardnumber": f"C-{i}", "player_id": i, "team_id": i, "manufacturer_id": i, "year": 1990}),
            ):
                created = http.post(f"{api}/{path}/", json=body, headers=auth)
                assert created.status_code == 201, (path, created.text)
                assert created.json()["id"] == i, created.text
        png = (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
            b"\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND"
            b"\xaeB`\x82"
        )
        uploaded = http.put(f"{api}/cards/1/image", content=png, headers={"content-type": "image/png", **auth})
        assert uploaded.status_code == 200, uploaded.text
    return auth


def run_schemathesis(url: str, cwd: Path, max_examples: int, auth: dict[str, str], paths: str = FUZZED_PATHS) -> str:
    config = cwd / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.tenant_slug" = "{SLUG}"\n')
    _, output = st_run(url, cwd, max_examples, auth, f"--config-file={config}", f"--include-path-regex={paths}")
    return output


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_the_tenant_api(served: Served, control_dsn: str, tmp_path: Path) -> None:
    auth = provision(served.url)
    output = run_schemathesis(served.url, tmp_path, 40, auth)
    server_log = served.log.read_text()
    report = f"{output}\n--- server log ---\n{server_log}"
    assert "No issues found" in output, report
    assert "Traceback" not in server_log, report
    match = re.search(r"Selected: (\d+)/", output)
    assert match and int(match[1]) == TENANT_OPERATIONS, report

    # The fuzzer's credential was good to the end: its requests reached the handlers, not the 401.
    with httpx.Client(base_url=served.url, timeout=30) as http:
        still = http.get(f"/t/{SLUG}/api/cards", headers=auth)
    assert still.status_code == 200, still.text

    # The requests reached the tenant's own database: the fuzzer made and changed rows there.
    with psycopg.connect(control_dsn) as conn:
        row = conn.execute("SELECT database_name FROM tenants WHERE slug = %s", (SLUG,)).fetchone()
    assert row is not None
    tenant_db = psycopg.conninfo.make_conninfo(control_dsn, dbname=row[0])
    with psycopg.connect(tenant_db) as conn:
        counts = {
            table: conn.execute(f"SELECT count(*), max(id) FROM {table}").fetchone()  # noqa: S608
            for table in ("manufacturers", "teams", "players", "cards")
        }
    assert any(maximum is not None and maximum > 3 for _, maximum in counts.values()), counts


def impersonate(url: str, control_dsn: str) -> dict[str, str]:
    """A super-admin (written straight into the control database), logged in, impersonating the
    fuzzed tenant's tenant_admin; the ``Authorization`` header of that token."""
    password = "fuzzing super admin password"
    hashed = asyncio.run(Passwords(AuthSettings(argon2_memory_kib=64, argon2_time_cost=1)).hash(password))
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO platform_admins (id, email, password_hash) VALUES (%s, 'fuzz@platform.test', %s)",
            (uuid.uuid4(), hashed),
        )
    with httpx.Client(base_url=url, timeout=30) as http:
        login = http.post("/auth/token", json={"email": "fuzz@platform.test", "password": password})
        assert login.status_code == 200, login.text
        made = http.post(
            f"/admin/tenants/{SLUG}/impersonate",
            json={"reason": "schemathesis"},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        )
        assert made.status_code == 200, made.text
    return {"Authorization": f"Bearer {made.json()['access_token']}"}


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_accounts_and_audit(
    served: Served, control_dsn: str, tmp_path: Path
) -> None:
    provision(served.url)
    auth = impersonate(served.url, control_dsn)
    output = run_schemathesis(served.url, tmp_path, 40, auth, ACCOUNT_PATHS)
    server_log = served.log.read_text()
    report = f"{output}\n--- server log ---\n{server_log}"
    assert "No issues found" in output, report
    assert "Traceback" not in server_log, report
    match = re.search(r"Selected: (\d+)/", output)
    assert match and int(match[1]) == ACCOUNT_OPERATIONS, report
    # The requests reached the handlers: they wrote (audited) changes beyond the impersonation itself.
    with psycopg.connect(control_dsn) as conn:
        row = conn.execute("SELECT database_name FROM tenants WHERE slug = %s", (SLUG,)).fetchone()
    assert row is not None
    with psycopg.connect(psycopg.conninfo.make_conninfo(control_dsn, dbname=row[0])) as conn:
        actions = dict(conn.execute("SELECT action, count(*) FROM audit_log GROUP BY action").fetchall())
    assert set(actions) - {"impersonation.start"}, actions
