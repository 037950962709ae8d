"""The body of both alembic environments (``alembic/env.py`` and ``tenant_schema/env.py``).

Driven programmatically by ``alembic_runner``, which passes an open SQLAlchemy ``Connection`` in
``config.attributes["connection"]`` (not inside a transaction, so that every revision commits on its
own) and the version table in ``config.attributes["version_table"]``. Without a connection it connects to
``sqlalchemy.url`` itself (a hand-written alembic.ini, for debugging). Online mode only: revisions are
explicit PostgreSQL DDL run through ``op.execute``; there is no metadata to autogenerate from.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool


def run_online(context: Any, *, name: str, default_version_table: str) -> None:
    """Run the migrations of the environment ``context`` (alembic's ``context`` module) named ``name``."""
    if context.is_offline_mode():
        raise RuntimeError(f"{name} runs online only (no --sql mode)")
    config = context.config

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=None,
            version_table=config.attributes.get("version_table") or default_version_table,
            # One transaction per revision: a failing revision leaves the previous ones applied and
            # recorded, so a re-run resumes from where each database stopped.
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(f"{name}: pass config.attributes['connection'] or set sqlalchemy.url")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as own_connection:
            run(own_connection)
    finally:
        engine.dispose()
