"""The reconciler's checks of a server itself (step 5 of a cycle, ``reconciler``): databases PUBLIC may
connect to (``public_connect``), closed one database at a time, and a server registered before server
identities were recorded (``server_identity``)."""

from __future__ import annotations

import logging

import psycopg

from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, ServerExists, ServerUnavailable
from controlplane.fleet import catalog as fleet_catalog
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import Server, ServerIdentity
from controlplane.platform import Platform
from controlplane.provisioning.models import Finding, ReconcileReport

log = logging.getLogger(__name__)


async def public_connect(
    platform: Platform,
    report: ReconcileReport,
    server: Server,
    databases: list[fleet_catalog.OpenDatabase],
    fix: bool,
) -> None:
    """A ``public_connect`` finding per database; with ``fix``, PUBLIC's CONNECT revoked on each on its own
    (one that fails gets ``failed: ...`` and is tried again next cycle; the others go on)."""
    findings = {
        d.name: Finding(
            kind="public_connect",
            server=server.name,
            subject=d.name,
            detail=f"every role may connect (PUBLIC has CONNECT; owner {d.owner}), tenant roles included",
        )
        for d in databases
    }
    report.findings.extend(findings.values())
    if not fix or not databases:
        return
    for d in databases:
        if not d.manageable:
            findings[d.name].action = "failed: " + fleet_catalog.unmanageable_detail([d])
    manageable = [d.name for d in databases if d.manageable]
    try:
        async with platform.control.connection() as conn, platform.fleet.admin(conn, server.id) as admin:
            for name in manageable:
                findings[name].action = await _lock_down_one(admin, name)
    except CardVaultError as exc:
        for name in manageable:
            if findings[name].action == "reported":
                findings[name].action = f"failed: {exc.detail}"


async def _lock_down_one(admin: AsyncConn, name: str) -> str:
    """PUBLIC's CONNECT revoked on one database: the finding's action. A database error (a GRANT or REVOKE
    on the same ``pg_database`` row committed meanwhile: "tuple concurrently updated", a lock timeout) fails
    this database only; the next cycle tries it again."""
    try:
        still_open = await fleet_catalog.lock_down(admin, [name])
    except psycopg.Error as exc:
        log.warning("could not revoke PUBLIC's CONNECT on %s: %s", name, exc)
        if admin.closed:
            raise ServerUnavailable(f"the connection was lost: {str(exc).strip()}") from exc
        return f"failed: {str(exc).strip()} (retried next cycle)"
    return "failed: still open" if still_open else "revoked"


async def unidentified(
    platform: Platform, report: ReconcileReport, server: Server, reached: ServerIdentity, fix: bool
) -> None:
    """A ``server_identity`` finding; with ``fix``, the identity its DSN reaches recorded (unless another
    registered server has it: the same server under two names is reported, never changed)."""
    finding = Finding(
        kind="server_identity",
        server=server.name,
        subject=server.name,
        detail=f"registered before server identities were recorded; its DSN reaches {reached.describe()}",
    )
    report.findings.append(finding)
    if not fix:
        return
    try:
        async with platform.control.connection() as conn:
            await fleet_repository.set_identity(conn, server, reached)
        finding.action = "recorded"
    except ServerExists as exc:
        finding.action = f"failed: {exc.detail} (the same server under two names)"
