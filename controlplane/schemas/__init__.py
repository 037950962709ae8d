"""The two database schemas as alembic environments: the control database (``alembic/``) and one tenant
database (``tenant_schema/``): loading their revisions, rendering and running them, and upgrading the
control database at start-up (``control.migrate_registry``).

Below the platform (``Platform`` holds the tenant schema's scripts); running the tenant schema across the
fleet is ``controlplane.migrations``.
"""
