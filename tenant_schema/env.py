"""alembic environment of ONE tenant database: the CardVault schema (see controlplane.schemas.alembic_env).

Online (run against a database) and offline (``--sql``: rendered once, applied to the whole fleet).
"""

from alembic import context

from controlplane.schemas.alembic_env import run

run(context, name="tenant_schema", default_version_table="tenant_schema_version")
