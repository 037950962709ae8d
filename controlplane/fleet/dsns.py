"""Server DSNs: they must say exactly which server, as which user, and they never reach a log.

A DSN that leans on libpq defaults (no host: the local socket; no port: 5432; no user: the process's
own) reaches whatever happens to listen there, so a registered server names all four explicitly.
"""

from __future__ import annotations

import psycopg
from psycopg import conninfo

from controlplane.errors import ValidationFailed

#: Parameters a server DSN must name itself (never left to libpq defaults or PG* variables).
REQUIRED = ("host", "port", "user", "dbname")


def parse(dsn: object) -> dict[str, str]:
    """The DSN's parameters; ``ValidationFailed`` when it is no connection string at all.

    The error never quotes the DSN: libpq's own message may repeat a fragment of it (a password).
    """
    if not isinstance(dsn, str) or "\x00" in dsn:
        raise ValidationFailed("invalid DSN: not a libpq connection string (key=value pairs or a postgresql:// URI)")
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ValidationFailed(
            "invalid DSN: not a libpq connection string (key=value pairs or a postgresql:// URI)"
        ) from None
    return {key: str(value) for key, value in params.items() if value is not None}


def explicit(dsn: object) -> dict[str, str]:
    """The parameters of a server DSN that names one host, one port, a user and a database."""
    params = parse(dsn)
    missing = [key for key in REQUIRED if not params.get(key, "").strip()]
    if missing:
        raise ValidationFailed(
            "the DSN must name the server exactly: "
            + ", ".join(missing)
            + " missing (give host, port, user and dbname; libpq defaults are not used)",
            missing=missing,
        )
    if "," in params["host"] or "," in params["port"] or "," in params.get("hostaddr", ""):
        raise ValidationFailed("the DSN must name one server: several hosts or ports given")
    try:
        port = int(params["port"])
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValidationFailed("the DSN's port must be a number from 1 to 65535")
    return params
