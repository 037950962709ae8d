"""The files of a PgBouncer: ``pgbouncer.ini`` and ``userlist.txt``, rendered from the registry and written
atomically (mode 0600).

One PgBouncer fronts one server, in transaction mode: ``[databases]`` has one entry per tenant database
of that server, pointing at the server's own host and port; the auth file has each tenant role's SCRAM
verifier, the one the server stores (``crypto.tenant_role_verifier`` is deterministic), so PgBouncer
authenticates the client and then logs in to the server with the client's SCRAM keys: no password is
written anywhere in plain text. Transaction mode shares server connections between clients from one
transaction to the next, so nothing a tenant connection relies on may live in the session: the statement
timeout the pools pass as a startup option (``pools.models.STATEMENT_TIMEOUT``) is set here by
``connect_query`` on every server connection, and the pools turn psycopg's prepared statements off for
connections through PgBouncer (``pools.connection``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from psycopg import conninfo

from controlplane.crypto import scram_sha256_verifier, tenant_role_verifier
from controlplane.fleet.pgbouncer_models import ADMIN_USER, PgBouncerAddress
from controlplane.fleet.tls import ServerTls
from controlplane.settings import PoolSettings

INI_FILE = "pgbouncer.ini"
USERLIST_FILE = "userlist.txt"
#: The server's root certificate (PEM), when the registry has one, for ``server_tls_ca_file``.
ROOT_CERT_FILE = "server-root.crt"

#: First line of every ``pgbouncer.ini`` written here: a directory holding one is the control plane's to write.
HEADER = "; Written by the CardVault control plane from its registry: edits are overwritten."

#: Names that need no quoting in an ini key or a connection string (tenant databases always match).
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _value(text: str) -> str:
    """A connection-string value as PgBouncer reads it: quoted when it is not a plain word."""
    if re.fullmatch(r"[A-Za-z0-9_./:-]+", text):
        return text
    return "'" + text.replace("'", "''") + "'"


def _quoted(text: str) -> str:
    """A userlist field: double quotes, inner ones doubled."""
    return '"' + text.replace('"', '""') + '"'


def render_ini(
    *,
    address: PgBouncerAddress,
    config_dir: Path,
    server_dsn: str,
    tls: ServerTls,
    databases: Iterable[str],
    pools: PoolSettings,
    statement_timeout: float,
) -> str:
    """``pgbouncer.ini`` for the tenant ``databases`` of the server ``server_dsn`` reaches."""
    params = conninfo.conninfo_to_dict(server_dsn)
    host, port = str(params.get("host") or "localhost"), str(params.get("port") or "5432")
    timeout = f"SET statement_timeout = {int(statement_timeout * 1000)}"
    lines = [HEADER, "[databases]"]
    names = [name for name in sorted(databases) if _PLAIN_NAME.fullmatch(name)]  # an odd name is left out
    size = server_pool_size(pools, len(names))
    for name in names:
        lines.append(f"{name} = host={_value(host)} port={_value(port)} dbname={name} connect_query={_value(timeout)}")
    settings = {
        "listen_addr": address.host,
        "listen_port": str(address.port),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": str(config_dir / USERLIST_FILE),
        "admin_users": ADMIN_USER,
        "pool_mode": "transaction",
        "server_reset_query": "",
        "default_pool_size": str(size),
        "min_pool_size": "0",
        "reserve_pool_size": "0",
        "max_client_conn": str(max(100, 4 * pools.connection_budget)),
        "max_db_connections": str(size),
        "server_idle_timeout": str(max(1, int(pools.idle_timeout))),
        "server_tls_sslmode": tls.sslmode or str(params.get("sslmode") or "prefer"),
        "logfile": str(config_dir / "pgbouncer.log"),
        "pidfile": str(config_dir / "pgbouncer.pid"),
    }
    if tls.root_cert is not None:
        settings["server_tls_ca_file"] = str(config_dir / ROOT_CERT_FILE)
    lines += ["", "[pgbouncer]", *(f"{key} = {value}" for key, value in settings.items()), ""]
    return "\n".join(lines)


def server_pool_size(pools: PoolSettings, databases: int) -> int:
    """Server connections PgBouncer may open per tenant database: ``per_tenant_max``, lowered so that all
    of the server's tenant databases together stay within ``connection_budget`` while that is possible
    (at least one each). PgBouncer has no limit across databases (pgbouncer issue 103), so this is what
    keeps the server within the budget when every tenant is active at once; in transaction mode one
    server connection serves a cold tenant's requests one transaction after another."""
    fair_share = pools.connection_budget // databases if databases else pools.per_tenant_max
    return max(1, min(pools.per_tenant_max, fair_share))


def render_userlist(admin_password: str, roles: Iterable[tuple[str, str]]) -> str:
    """``userlist.txt``: the admin user's verifier, then each ``(role, password)``'s tenant verifier.

    Every verifier is the same for the same password (salts derived from it), so an unchanged
    configuration renders byte for byte the same and a sync with nothing new writes and reloads nothing.
    """
    salt = hashlib.sha256(b"cardvault pgbouncer admin salt\0" + admin_password.encode()).digest()[:16]
    lines = [f"{_quoted(ADMIN_USER)} {_quoted(scram_sha256_verifier(admin_password, salt=salt))}"]
    lines += [f"{_quoted(role)} {_quoted(tenant_role_verifier(password))}" for role, password in sorted(roles)]
    return "\n".join(lines) + "\n"


def new_admin_password() -> str:
    """A random password for the PgBouncer admin user (stored encrypted in the registry)."""
    return secrets.token_urlsafe(32)


def usable_directory(directory: Path) -> bool:
    """Whether the control plane may write PgBouncer's files in ``directory``: an existing directory that is
    empty or already holds a ``pgbouncer.ini`` written here (never someone else's files)."""
    if not directory.is_dir():
        return False
    ini = read(directory / INI_FILE)
    if ini is not None:
        return ini.startswith(HEADER)
    return not any(directory.iterdir())


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def write_private(path: Path, content: str) -> bool:
    """Replace ``path`` with ``content`` atomically, mode 0600, owned by the directory's owner (PgBouncer
    runs as that user; the control plane may run as root); False when it already held exactly that."""
    if read(path) == content and (path.stat().st_mode & 0o777) == 0o600:
        return False
    directory = path.parent
    owner = directory.stat()
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
                os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return True
