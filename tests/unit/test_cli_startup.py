"""The ``cardvault`` command starts light: parsing arguments and ``--help`` load no heavy library.

alembic, SQLAlchemy, litestar, psycopg, PyJWT and argon2 cost most of a second to import; commands
import them when they run, so ``cardvault --help`` (and a typo) answers at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("alembic", "sqlalchemy", "litestar", "psycopg", "psycopg_pool", "jwt", "argon2", "uvicorn")
CARDVAULT = Path(sys.executable).with_name("cardvault")


def test_the_command_line_imports_no_heavy_library() -> None:
    probe = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from controlplane.cli import cli\n"
        "for args in (['--help'], ['migrate', '--help'], ['migrate', 'tenants', '--help'], ['tenants', '--help']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "click" in loaded and "controlplane" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_help_lists_every_command() -> None:
    done = subprocess.run([str(CARDVAULT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("serve", "local", "migrate", "servers", "tenants", "users", "reconcile", "maintenance", "admins"):
        assert f"  {command} " in done.stdout, command
