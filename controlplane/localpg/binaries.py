"""Finding the PostgreSQL binaries (``initdb``, ``pg_ctl``) on this machine, or saying what to install."""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from controlplane.errors import ConfigError

#: Environment variable naming the directory holding ``initdb`` and ``pg_ctl``.
BINDIR_ENV = "CARDVAULT_PG_BINDIR"
_TOOLS = ("initdb", "pg_ctl")


class PostgresNotFound(ConfigError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) on this machine."""

    code = "postgres_not_found"

    @classmethod
    def searched(cls, looked: Sequence[str]) -> PostgresNotFound:
        where = "\n".join(f"  - {place}" for place in looked)
        return cls(
            "PostgreSQL server binaries (initdb, pg_ctl) not found. Looked in:\n"
            f"{where}\n"
            f"Install them: {install_hint()}.\n"
            f"Or set {BINDIR_ENV} to the directory holding initdb and pg_ctl, "
            "or set CARDVAULT_DATABASE_URL to use an existing server.",
            looked=list(looked),
        )


def _os_release() -> dict[str, str]:
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
    return values


def install_hint(system: str | None = None, os_release: Mapping[str, str] | None = None) -> str:
    """The command that installs PostgreSQL on this (or the given) platform."""
    system = system or platform.system()
    if system == "Darwin":
        return "brew install postgresql@15 (Homebrew; macOS)"
    if system != "Linux":
        return "PostgreSQL 15 or newer from https://www.postgresql.org/download/"
    release = _os_release() if os_release is None else os_release
    family = {release.get("ID", ""), *release.get("ID_LIKE", "").split()}
    if family & {"debian", "ubuntu"}:
        return "apt-get install postgresql (Debian/Ubuntu)"
    if family & {"fedora", "rhel", "centos"}:
        return "dnf install postgresql-server (Fedora/RHEL)"
    if "alpine" in family:
        return "apk add postgresql (Alpine)"
    if "arch" in family:
        return "pacman -S postgresql (Arch)"
    if family & {"suse", "opensuse"}:
        return "zypper install postgresql-server (openSUSE)"
    return (
        "apt-get install postgresql (Debian/Ubuntu), dnf install postgresql-server (Fedora/RHEL) "
        "or brew install postgresql@15 (macOS)"
    )


def has_tools(bindir: Path) -> bool:
    return all((bindir / tool).is_file() and os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def _version_key(path: str) -> tuple[int, ...]:
    digits = re.findall(r"\d+", Path(path).parent.name)
    return tuple(int(d) for d in digits)


def _newest(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern), key=_version_key, reverse=True)


def find_bindir() -> Path:
    """The directory holding PostgreSQL's ``initdb`` and ``pg_ctl``.

    Order: ``$CARDVAULT_PG_BINDIR`` (authoritative when set), ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin``, ``/usr/local/pgsql/bin``, ``PATH``, then the usual
    PGDG/Homebrew locations. Raises :class:`PostgresNotFound` saying what to install.
    """
    env = os.environ.get(BINDIR_ENV, "").strip()
    if env:
        bindir = Path(env).expanduser()
        if has_tools(bindir):
            return bindir
        raise PostgresNotFound.searched([f"{bindir} (from {BINDIR_ENV}; no initdb/pg_ctl there)"])

    looked: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        looked.append("pg_config --bindir (pg_config not on PATH)")
    else:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and has_tools(Path(out)):
            return Path(out)
        looked.append(f"{out or '?'} (from {pg_config} --bindir)")

    candidates = [*_newest("/usr/lib/postgresql/*/bin"), "/usr/local/pgsql/bin"]
    for candidate in candidates:
        if has_tools(Path(candidate)):
            return Path(candidate)
    looked += ["/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"]

    initdb = shutil.which("initdb")
    if initdb is not None and has_tools(Path(initdb).parent):
        return Path(initdb).parent
    looked.append("PATH")

    extra = [
        *_newest("/usr/pgsql-*/bin"),
        *_newest("/opt/homebrew/opt/postgresql@*/bin"),
        *_newest("/usr/local/opt/postgresql@*/bin"),
    ]
    for candidate in extra:
        if has_tools(Path(candidate)):
            return Path(candidate)
    looked += ["/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin"]
    raise PostgresNotFound.searched(looked)
