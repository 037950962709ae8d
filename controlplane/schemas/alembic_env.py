"""The body of both alembic environments (``alembic/env.py`` and ``tenant_schema/env.py``).

Driven programmatically by ``alembic_runner``, which passes an open SQLAlchemy ``Connection`` in
``config.attributes["connection"]`` (not inside a transaction, so that every revision commits on its
own) and the version table in ``config.attributes["version_table"]``. Without a connection it connects to
``sqlalchemy.url`` itself (a hand-written alembic.ini, for debugging). Revisions are explicit PostgreSQL
DDL run through ``op.execute``; there is no metadata to autogenerate from.

Offline (``--sql``) mode renders the SQL of a revision range instead of running it: the tenant fleet
is upgraded by rendering each revision once and applying the text to every tenant database
(``SchemaScripts.render_steps``). It writes to ``config.attributes["output_buffer"]`` (stdout without
one) and is allowed by ``run`` only; the control database environment calls ``run_online``.
"""

from __future__ import annotations

import sys
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool


def run(context: Any, *, name: str, default_version_table: str) -> None:
    """Run (online) or render (offline) the migrations of the environment ``context``."""
    if context.is_offline_mode():
        run_offline(context, default_version_table=default_version_table)
    else:
        run_online(context, name=name, default_version_table=default_version_table)


def run_offline(context: Any, *, default_version_table: str) -> None:
    """Render the revisions' SQL (one ``BEGIN;`` ... ``COMMIT;`` block per revision) to the output buffer."""
    config = context.config
    context.configure(
        dialect_name="postgresql",
        output_buffer=config.attributes.get("output_buffer") or sys.stdout,
        version_table=config.attributes.get("version_table") or default_version_table,
        transaction_per_migration=True,
        literal_binds=True,
        # "named", not the driver's "pyformat": a literal % in the SQL must not come out doubled.
        dialect_opts={"paramstyle": "named"},
        target_metadata=None,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online(context: Any, *, name: str, default_version_table: str) -> None:
    """Run the migrations of the environment ``context`` (alembic's ``context`` module) named ``name``."""
    if context.is_offline_mode():
        raise RuntimeError(f"{name} runs online only (no --sql mode)")
    config = context.config

    def migrate(connection: Connection) -> None:
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
        migrate(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(f"{name}: pass config.attributes['connection'] or set sqlalchemy.url")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as own_connection:
            migrate(own_connection)
    finally:
        engine.dispose()
