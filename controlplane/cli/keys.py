"""``cardvault keys rotate | status | list | prune``: the master key's rotation and the token signing keys.

``keys rotate`` brings every key up to date: each secret stored in the control database is re-encrypted
under the current master key (``CARDVAULT_SECRET_KEY``; values only a key of
``CARDVAULT_SECRET_KEY_PREVIOUS`` opens), then access tokens get a new signing key (the old ones keep
verifying for one token lifetime + 2 minutes, so nobody is logged out). After a master-key change this
is what an operator runs, and a new signing key is part of it: whoever held the old master key could
read the old signing keys. ``--secrets-only`` re-encrypts without a new signing key (to resume an
interrupted rotation, say). The command exits 1 while any value is still readable only with a previous
key or with none.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import cli_actor, emit_json, json_option, table, to_builtins, with_platform

if TYPE_CHECKING:  # imported where used, so that the command line starts fast
    from controlplane.db import AsyncConn
    from controlplane.keys.models import ColumnCounts, KeyReport
    from controlplane.platform import Platform

#: Retired signing keys verify this much longer than the access-token lifetime (clock skew, slow refreshes).
_ROTATION_MARGIN = 120.0
_ROTATE_COLUMNS = ("column", "values", "reencrypted", "current", "changed", "unreadable")
_STATUS_COLUMNS = ("column", "values", "current", "previous", "unreadable")
_KEY_COLUMNS = ("kid", "active", "created_at", "retired_at", "verify_until")


@click.group()
def keys() -> None:
    """The master key's rotation (secrets at rest) and the keys access tokens are signed with."""


def _summary(report: KeyReport) -> dict[str, Any]:
    return {
        "columns": to_builtins(report.columns),
        "reencrypted": report.reencrypted,
        "remaining": report.remaining,
        "unreadable": report.unreadable,
        "previous_keys": report.previous_keys,
    }


@keys.command("rotate")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Rows re-encrypted per transaction.",
)
@click.option("--secrets-only", is_flag=True, help="Only re-encrypt the stored secrets; no new signing key.")
@json_option
def rotate(batch_size: int, secrets_only: bool, as_json: bool) -> None:
    """Re-encrypt every stored secret under CARDVAULT_SECRET_KEY, then sign tokens with a new key.

    Online and resumable: small batches, each row compared-and-swapped; run it again after an
    interruption. Counts per column; exit status 1 while values remain that only a previous key (or no
    key) opens.
    """
    from controlplane.auth import tokens
    from controlplane.keys import service

    def progress(counts: ColumnCounts) -> None:
        if not as_json:
            click.echo(f"{counts.column}: {counts.reencrypted} of {counts.values} re-encrypted", err=True)

    async def work(platform: Platform) -> dict[str, Any]:
        rotated = await service.rotate(platform, batch_size=batch_size, progress=progress)
        after = await service.status(platform)
        result = _summary(rotated) | {"remaining": after.remaining, "unreadable": after.unreadable}
        async with platform.control.connection() as conn, conn.transaction():
            if rotated.reencrypted:
                counts = {c.column: c.reencrypted for c in rotated.columns if c.reencrypted}
                await _audit(conn, "secrets.reencrypt", "master_key", None, reencrypted=counts)
            if not secrets_only:
                verify_for = platform.settings.auth.access_token_ttl + _ROTATION_MARGIN
                kid = await tokens.rotate(conn, platform.box, verify_for=verify_for)
                await _audit(conn, "signing_key.rotate", "signing_key", kid, verify_for=verify_for)
                result |= {"kid": kid, "previous_keys_verify_for": verify_for}
        return result

    result = with_platform(work)
    if as_json:
        emit_json(result)
    else:
        table(result["columns"], _ROTATE_COLUMNS)
        click.echo(f"re-encrypted {result['reencrypted']} value(s) under the current key")
        if "kid" in result:
            click.echo(
                f"new signing key {result['kid']}; retired keys keep verifying for "
                f"{result['previous_keys_verify_for']:.0f} s"
            )
        _remaining(result)
    if result["remaining"] or result["unreadable"]:
        sys.exit(1)


@keys.command("status")
@json_option
def status(as_json: bool) -> None:
    """How many stored secrets only a previous key (or no key) opens: 0 means it can be removed."""
    from controlplane.keys import service

    async def work(platform: Platform) -> dict[str, Any]:
        return _summary(await service.status(platform))

    result = with_platform(work)
    if as_json:
        emit_json(result)
        return
    table(result["columns"], _STATUS_COLUMNS)
    _remaining(result)


@keys.command("list")
@json_option
def list_keys(as_json: bool) -> None:
    """List signing keys (never their secrets)."""
    from controlplane.auth import repository

    async def work(platform: Platform) -> list[repository.SigningKeyInfo]:
        async with platform.control.connection() as conn:
            return await repository.list_signing_keys(conn)

    found = with_platform(work)
    if as_json:
        emit_json(found)
    else:
        table([to_builtins(k) for k in found], _KEY_COLUMNS)


@keys.command("prune")
@json_option
def prune(as_json: bool) -> None:
    """Delete retired keys that no longer verify anything."""
    from controlplane.auth import repository

    async def work(platform: Platform) -> int:
        async with platform.control.connection() as conn, conn.transaction():
            deleted = await repository.prune_signing_keys(conn)
            await _audit(conn, "signing_key.prune", "signing_key", None, deleted=deleted)
        return deleted

    deleted = with_platform(work)
    if as_json:
        emit_json({"deleted": deleted})
    else:
        click.echo(f"deleted {deleted} expired signing key(s)")


def _remaining(result: dict[str, Any]) -> None:
    remaining, unreadable = result["remaining"], result["unreadable"]
    if remaining:
        click.echo(f"{remaining} value(s) readable only with a previous key: run `cardvault keys rotate`")
    elif result["previous_keys"]:
        click.echo("no value needs a previous key any more: remove CARDVAULT_SECRET_KEY_PREVIOUS")
    else:
        click.echo("every value is encrypted with the current key")
    if unreadable:
        click.echo(f"{unreadable} value(s) readable with no configured key (a key removed too early?)", err=True)


async def _audit(conn: AsyncConn, action: str, entity: str, entity_id: object, **details: Any) -> None:
    from controlplane.audit import repository as audit
    from controlplane.context import AuditContext

    await audit.record_platform(
        conn, AuditContext(actor=cli_actor()), action, entity=entity, entity_id=entity_id, details=details
    )
