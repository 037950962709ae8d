"""Usage counters: cards, users and stored bytes, kept exact by triggers.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01

Quota checks must be O(1) and exact under concurrency. ``usage_counters`` holds one row per metered
quantity, seeded from the tables and then maintained by statement-level triggers (transition tables, so
a bulk import costs one counter update per statement, not per row). A create locks its counter row
(``SELECT ... FOR UPDATE``), compares it with the limit and inserts; the trigger's update of the same
row happens inside that transaction, so concurrent creates queue on the row and each one sees the count
its predecessors committed.

The triggers run as whoever writes (the tenant's role: the control plane grants it DML on every table
after migrating, this one included), so they are ordinary SECURITY INVOKER functions. They name
``public.usage_counters`` explicitly so a temporary table of the same name cannot stand in for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE usage_counters (
            name  text PRIMARY KEY
                  CONSTRAINT usage_counters_name_check CHECK (name IN ('cards', 'users', 'storage_bytes')),
            value bigint NOT NULL
        )
        """
    )
    op.execute(
        """
        INSERT INTO usage_counters (name, value) VALUES
            ('cards', (SELECT count(*) FROM cards)),
            ('users', (SELECT count(*) FROM users)),
            ('storage_bytes', (SELECT coalesce(sum(bytes), 0) FROM files))
        """
    )

    # Rows inserted or deleted by one statement: +n or -n on the counter named by the trigger argument.
    op.execute(
        """
        CREATE FUNCTION cardvault_count_rows() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            delta bigint;
        BEGIN
            IF TG_OP = 'INSERT' THEN
                SELECT count(*) INTO delta FROM new_rows;
            ELSE
                SELECT -count(*) INTO delta FROM old_rows;
            END IF;
            IF delta <> 0 THEN
                UPDATE public.usage_counters SET value = value + delta WHERE name = TG_ARGV[0];
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    # Stored bytes: inserted files add, deleted files subtract, updates add the difference (and leave
    # the counter row alone when no size changed, so relinking a file to a card takes no counter lock).
    op.execute(
        """
        CREATE FUNCTION cardvault_count_file_bytes() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            delta bigint := 0;
        BEGIN
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                delta := delta + (SELECT coalesce(sum(bytes), 0) FROM new_rows);
            END IF;
            IF TG_OP IN ('DELETE', 'UPDATE') THEN
                delta := delta - (SELECT coalesce(sum(bytes), 0) FROM old_rows);
            END IF;
            IF delta <> 0 THEN
                UPDATE public.usage_counters SET value = value + delta WHERE name = 'storage_bytes';
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    # TRUNCATE bypasses row triggers; the counter follows it to zero.
    op.execute(
        """
        CREATE FUNCTION cardvault_reset_counter() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE public.usage_counters SET value = 0 WHERE name = TG_ARGV[0];
            RETURN NULL;
        END
        $$
        """
    )

    op.execute(
        """
        CREATE TRIGGER cards_count_insert AFTER INSERT ON cards
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_rows('cards');
        CREATE TRIGGER cards_count_delete AFTER DELETE ON cards
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_rows('cards');
        CREATE TRIGGER cards_count_truncate AFTER TRUNCATE ON cards
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_reset_counter('cards');
        CREATE TRIGGER users_count_insert AFTER INSERT ON users
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_rows('users');
        CREATE TRIGGER users_count_delete AFTER DELETE ON users
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_rows('users');
        CREATE TRIGGER users_count_truncate AFTER TRUNCATE ON users
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_reset_counter('users')
        """
    )
    op.execute(
        """
        CREATE TRIGGER files_count_insert AFTER INSERT ON files
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_file_bytes();
        CREATE TRIGGER files_count_update AFTER UPDATE ON files
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_file_bytes();
        CREATE TRIGGER files_count_delete AFTER DELETE ON files
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_count_file_bytes();
        CREATE TRIGGER files_count_truncate AFTER TRUNCATE ON files
            FOR EACH STATEMENT EXECUTE FUNCTION cardvault_reset_counter('storage_bytes')
        """
    )


def downgrade() -> None:
    # Named one by one rather than DROP FUNCTION ... CASCADE, which would hide a missing trigger.
    op.execute(
        """
        DROP TRIGGER cards_count_insert ON cards;
        DROP TRIGGER cards_count_delete ON cards;
        DROP TRIGGER cards_count_truncate ON cards;
        DROP TRIGGER users_count_insert ON users;
        DROP TRIGGER users_count_delete ON users;
        DROP TRIGGER users_count_truncate ON users;
        DROP TRIGGER files_count_insert ON files;
        DROP TRIGGER files_count_update ON files;
        DROP TRIGGER files_count_delete ON files;
        DROP TRIGGER files_count_truncate ON files
        """
    )
    op.execute("DROP FUNCTION cardvault_reset_counter()")
    op.execute("DROP FUNCTION cardvault_count_file_bytes()")
    op.execute("DROP FUNCTION cardvault_count_rows()")
    op.execute("DROP TABLE usage_counters")
