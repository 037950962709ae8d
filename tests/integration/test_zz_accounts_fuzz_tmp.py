from pathlib import Path

import httpx

from tests.conftest import Served
from tests.integration import test_tenant_api_fuzz as fz
from tests.integration.tenant_support import create_tenant_as_admin_sync


def test_accounts_fuzz(served: Served, tmp_path: Path) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        auth = create_tenant_as_admin_sync(http, fz.SLUG, tier="enterprise", name="Fuzz")
    import subprocess
    import sys

    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.tenant_slug" = "{fz.SLUG}"\n')
    st = str(Path(sys.executable).parent / "st")
    command = [
        st,
        f"--config-file={config}",
        "run",
        f"{served.url}/schema/openapi.json",
        "--checks=not_a_server_error",
        "--max-examples=60",
        *(f"--header={n}: {v}" for n, v in auth.items()),
        "--phases=examples,coverage,fuzzing,stateful",
        "--generation-allow-x00=true",
        "--workers=1",
        "--seed=20251128",
        "--generation-database=none",
        "--request-timeout=30",
        "--no-color",
        "--warnings=off",
        "--include-path-regex=^/t/\\{tenant_slug\\}/api/(me|users|api-keys|settings)",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    out = result.stdout + result.stderr
    log = served.log.read_text()
    print(out[-6000:])
    print("--- server log ---")
    print(log[-6000:])
    assert "No issues found" in out
    assert "Traceback" not in log
