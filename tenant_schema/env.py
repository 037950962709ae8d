"""alembic environment of ONE tenant database: the CardVault schema.

Driven programmatically by ``controlplane.migrations.alembic_runner``, which passes an open SQLAlchemy
``Connection`` in ``config.attributes["connection"]`` (not inside a transaction, so that every revision
commits on its own) and the version table in ``config.attributes["version_table"]``. Without a
connection it connects to ``sqlalchemy.url`` itself (a hand-written alembic.ini, for debugging).

Online mode only: revisions are explicit PostgreSQL DDL run through ``op.execute``; there is no
metadata to autogenerate from.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

DEFAULT_VERSION_TABLE = "tenant_schema_version"

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table=config.attributes.get("version_table") or DEFAULT_VERSION_TABLE,
        # One transaction per revision: a failing revision leaves the previous ones applied and
        # recorded, so a fleet run can be resumed from where each database stopped.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("tenant_schema: pass config.attributes['connection'] or set sqlalchemy.url")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as own_connection:
            run_migrations(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("tenant_schema runs online only (no --sql mode)")
run_migrations_online()
