"""alembic environment of the CONTROL database: the tenants registry (see controlplane.schemas.alembic_env)."""

from alembic import context

from controlplane.schemas.alembic_env import run_online

run_online(context, name="the control database environment", default_version_table="alembic_version")
