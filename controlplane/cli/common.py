"""What every ``cardvault`` command shares: settings, secrets, running a coroutine, output."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import msgspec

from controlplane.errors import CardVaultError, ConfigError, ConfirmationRequired
from controlplane.settings import Settings

if TYPE_CHECKING:
    from controlplane.platform import Platform

T = TypeVar("T")

SECRET_KEY_FILE = "secret_key"
ADMIN_TOKEN_FILE = "admin_token"


@click.group()
@click.version_option(package_name="cardvault-controlplane")
def cli() -> None:
    """CardVault control plane: one PostgreSQL database per tenant."""


def _secret_file(data_dir: Path, name: str, *, create: bool) -> tuple[str, bool]:
    """The secret stored in ``data_dir/name``; generated (0600) when missing and ``create``."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip(), False
    if not create:
        return "", False
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value, True


def load_settings(*, create_secrets: bool = False) -> Settings:
    """Settings from the environment; unset secrets come from (or, for a first local run, go to) the
    data directory, and the local cluster's DSN is used when no database URL is set."""
    settings = Settings.from_env()
    secret_key, admin_token = settings.security.secret_key, settings.security.admin_token
    if not secret_key:
        secret_key, _ = _secret_file(settings.data_dir, SECRET_KEY_FILE, create=create_secrets)
    if not admin_token:
        admin_token, created = _secret_file(settings.data_dir, ADMIN_TOKEN_FILE, create=create_secrets)
        if created:
            click.echo(
                f"Generated admin token (also in {settings.data_dir / ADMIN_TOKEN_FILE}):\n  {admin_token}", err=True
            )
    settings = settings.replace(
        security=dataclasses.replace(settings.security, secret_key=secret_key, admin_token=admin_token)
    )
    if not settings.database.url:
        from controlplane.localpg import LocalCluster

        cluster = LocalCluster(settings.data_dir / "postgres")
        if cluster.is_running():
            settings = settings.replace(database=dataclasses.replace(settings.database, url=cluster.dsn("cardvault")))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; domain errors become a JSON error on stderr and exit status 1."""
    try:
        return asyncio.run(_call(coro_fn))
    except CardVaultError as exc:
        fail(exc)


async def _call(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return await coro_fn()


def fail(exc: CardVaultError) -> NoReturn:
    click.echo(json.dumps(exc.to_json(), default=str), err=True)
    sys.exit(1 if not isinstance(exc, ConfigError) else 2)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(to_builtins(value), indent=2, default=str))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned text table."""
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@contextmanager
def confirm_destructive(slug: str, action: str, yes: bool) -> Iterator[None]:
    """Ask for the slug typed back unless ``--yes``; refuse without a terminal."""
    if not yes:
        if not sys.stdin.isatty():
            fail(ConfirmationRequired(f"refusing to {action} {slug!r} without --yes (no terminal to confirm on)"))
        typed = click.prompt(f"This will {action} tenant {slug!r}. Type the slug to confirm", default="")
        if typed != slug:
            click.echo("Aborted: the slug did not match.", err=True)
            sys.exit(1)
    yield


def with_platform(work: Callable[[Platform], Awaitable[T]]) -> T:
    """Run ``work`` on an opened ``Platform`` (settings from the environment); errors as ``run``."""
    from controlplane.platform import Platform  # not at import time: ``cardvault --help`` stays fast

    settings = load_settings()

    async def go() -> T:
        async with Platform.open(settings) as platform:
            return await work(platform)

    return run(go)


def cli_actor() -> str:
    """Who acts, for audit rows written by the CLI: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        user = str(os.getuid())
    return f"cli:{user}"


def read_password(prompt: str = "Password") -> str:
    """A new password: the first line of stdin when it is not a terminal, else prompted twice (hidden)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return password


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
