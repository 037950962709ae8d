"""Registry change notifications: NOTIFY on tenant and server changes, for the in-process registry cache.

Every replica keeps a cache of tenant lookups (``controlplane.routing.cache.TenantCache``) and LISTENs on
the control database; these triggers tell it which tenant or server changed, by id (a rename changes
the slug, so the slug cannot be the key; the cache drops the id and whatever slug it had for it).

- ``cardvault_tenants``, payload the tenant id: every INSERT and DELETE, and every UPDATE that changes a
  column the cache or the per-tenant pools depend on (id, slug, status, tier, server, database, role,
  role password). Updates of other columns (name, schema_revision, migration_error, updated_at, ...) do
  not notify: a fleet-wide migration recording 10,000 results must not flush 10,000 tenants' pools.
  If ``TenantContext`` gains a field, add its column here (a test checks the two agree).
- ``cardvault_servers``, payload the server id: a server's DSN changing or the server being removed,
  so credentials built from it are rebuilt.

NOTIFY is transactional: listeners hear of a change when it commits, never of one rolled back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION cardvault_notify_tenant_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                PERFORM pg_notify('cardvault_tenants', OLD.id::text);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                -- same payload twice in one transaction is delivered once
                PERFORM pg_notify('cardvault_tenants', NEW.id::text);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER tenants_notify_insert_delete
        AFTER INSERT OR DELETE ON tenants
        FOR EACH ROW EXECUTE FUNCTION cardvault_notify_tenant_change()
        """
    )
    # The columns the cache and the per-tenant pools depend on; keep in step with TenantContext.
    op.execute(
        """
        CREATE TRIGGER tenants_notify_update
        AFTER UPDATE ON tenants
        FOR EACH ROW WHEN (
            (OLD.id, OLD.slug, OLD.status, OLD.subscription_tier, OLD.server_id, OLD.database_name,
             OLD.role_name, OLD.role_password_encrypted)
            IS DISTINCT FROM
            (NEW.id, NEW.slug, NEW.status, NEW.subscription_tier, NEW.server_id, NEW.database_name,
             NEW.role_name, NEW.role_password_encrypted)
        )
        EXECUTE FUNCTION cardvault_notify_tenant_change()
        """
    )
    op.execute(
        """
        CREATE FUNCTION cardvault_notify_server_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cardvault_servers', OLD.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER db_servers_notify_update
        AFTER UPDATE ON db_servers
        FOR EACH ROW WHEN ((OLD.id, OLD.dsn_encrypted) IS DISTINCT FROM (NEW.id, NEW.dsn_encrypted))
        EXECUTE FUNCTION cardvault_notify_server_change()
        """
    )
    op.execute(
        """
        CREATE TRIGGER db_servers_notify_delete
        AFTER DELETE ON db_servers
        FOR EACH ROW EXECUTE FUNCTION cardvault_notify_server_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS db_servers_notify_delete ON db_servers")
    op.execute("DROP TRIGGER IF EXISTS db_servers_notify_update ON db_servers")
    op.execute("DROP FUNCTION IF EXISTS cardvault_notify_server_change()")
    op.execute("DROP TRIGGER IF EXISTS tenants_notify_update ON tenants")
    op.execute("DROP TRIGGER IF EXISTS tenants_notify_insert_delete ON tenants")
    op.execute("DROP FUNCTION IF EXISTS cardvault_notify_tenant_change()")
