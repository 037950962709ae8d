"""Helpers of the tests that run the ``cardvault`` command as operators do: a subprocess with its own
``CARDVAULT_*`` environment, its exit status, output and JSON errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import SECRET_KEY

CARDVAULT = str(Path(sys.executable).parent / "cardvault")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        """The JSON error: the last line on stderr."""
        lines = self.stderr.strip().splitlines()
        assert lines, "nothing on stderr"
        body: dict[str, Any] = json.loads(lines[-1])
        assert set(body) >= {"error", "detail"}, body
        return body


Cli = Callable[..., Result]


def cli_env(control_dsn: str, template: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``cardvault`` run against ``control_dsn`` (nothing inherited from ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDVAULT_")}
    env |= {
        "CARDVAULT_DATABASE_URL": control_dsn,
        "CARDVAULT_SECRET_KEY": SECRET_KEY,
        "CARDVAULT_TEMPLATE_DATABASE": template,
        "CARDVAULT_DATA_DIR": str(data_dir),
        "CARDVAULT_CONNECT_TIMEOUT": "3",
        "CARDVAULT_LOG_LEVEL": "WARNING",
        "CARDVAULT_ARGON2_MEMORY_KIB": "64",
        "CARDVAULT_ARGON2_TIME_COST": "1",
    }
    return env | extra


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    proc = subprocess.run(
        [CARDVAULT, *args],
        env=env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def refused(result: Result, code: str) -> dict[str, Any]:
    assert result.code != 0, result.stdout
    body = result.error()
    assert body["error"] == code, body
    return body
