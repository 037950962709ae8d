"""Property-based requests (schemathesis) against a real ``cardvault serve``: no admin or /auth operation
answers a 5xx, and the fuzzer gets past validation (tenants are really made and changed)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.conftest import Served
from tests.integration.admin_support import ADMIN_ROUTES, run_schemathesis, selected


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(served: Served, control_dsn: str, tmp_path: Path) -> None:
    """Property-based requests (valid and invalid, stateful sequences) to every admin and /auth operation:
    no 5xx.

    Two runs: draining every server makes tenant creation a correct 503 (no_server_available), so
    drain/activate are fuzzed on their own, after the tenant operations.
    """
    output = run_schemathesis(
        served.url,
        tmp_path,
        30,  # examples per operation: ~60 operations, several of which dump or restore a real database
        "--include-path-regex=^/(admin|health|auth)/",
        "--exclude-path-regex=^/admin/servers/.+/(drain|activate)$",
    )
    # Every admin operation but drain (POST and GET) and activate, the two probes and the four /auth operations.
    assert selected(output) == len(ADMIN_ROUTES) - 3 + 2 + 4, output
    output = run_schemathesis(served.url, tmp_path, 30, "--include-path-regex=^/admin/servers")
    # + GET, PUT and DELETE .../pgbouncer, GET and PUT .../replicas, GET .../drain
    assert selected(output) == 6 + 3 + 2 + 1, output
    with psycopg.connect(control_dsn) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM tenant_operations GROUP BY kind").fetchall())
    # The fuzzer got past the token and the validation: tenants were made and changed for real.
    assert kinds.get("provision", 0) > 0 and len(kinds) > 1, kinds
