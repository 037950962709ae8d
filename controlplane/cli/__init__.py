"""The ``cardvault`` command: the same services as the admin API, for operators and scripts.

Human tables by default, JSON with ``--json``; errors are printed as ``{"error": ..., "detail": ...}``
on stderr with a non-zero exit status.
"""

from __future__ import annotations

from controlplane.cli.admins import admins
from controlplane.cli.backups import backups
from controlplane.cli.billing import billing
from controlplane.cli.common import cli
from controlplane.cli.importer import import_sqlite
from controlplane.cli.keys import keys
from controlplane.cli.maintenance import maintenance, reconcile
from controlplane.cli.migrate import migrate
from controlplane.cli.moves import MOVE_COMMANDS
from controlplane.cli.pgbouncer import servers_pgbouncer
from controlplane.cli.privacy import privacy
from controlplane.cli.restores import RESTORE_COMMANDS
from controlplane.cli.serve import local, serve
from controlplane.cli.servers import servers
from controlplane.cli.spares import spares
from controlplane.cli.storage import storage
from controlplane.cli.tenants import tenants
from controlplane.cli.users import users
from controlplane.cli.worker import worker

for command in (serve, local, migrate, servers, tenants, users, reconcile, maintenance, admins, keys, billing, spares):
    cli.add_command(command)
cli.add_command(import_sqlite)
cli.add_command(privacy)
cli.add_command(storage)
cli.add_command(backups)
cli.add_command(worker)
servers.add_command(servers_pgbouncer)
for restore_command in RESTORE_COMMANDS:
    backups.add_command(restore_command)
for move_command in MOVE_COMMANDS:
    tenants.add_command(move_command)


def main() -> None:
    cli()
