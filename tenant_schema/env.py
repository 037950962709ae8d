"""alembic environment of ONE tenant database: the CardVault schema (see controlplane.migrations.alembic_env)."""

from alembic import context

from controlplane.migrations.alembic_env import run_online

run_online(context, name="tenant_schema", default_version_table="tenant_schema_version")
