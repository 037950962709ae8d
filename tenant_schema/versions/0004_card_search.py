"""Card search: trigram indexes so ``ILIKE '%term%'`` on cards does not read the whole table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

The tenant API searches cards with ``cardnumber ILIKE '%term%' OR notes ILIKE '%term%'``
(``controlplane.cards.repository``): a substring, case-insensitive, so no B-tree helps and every search
was a scan of the table. ``pg_trgm`` GIN indexes on both columns serve the two ``ILIKE`` conditions
(the planner ORs their bitmaps), for any term of three characters or more.

``pg_trgm`` is a trusted extension (PostgreSQL 13+): the owner of the database may create it, so this
runs as whoever migrates the tenant (the server's management role, which creates and owns every tenant
database). It is created in the template database like any other revision, and clones inherit it.

``gin_pending_list_limit = 256`` (kB, default 4 MB): new rows wait in the index's unsorted pending list
until it is full or autovacuum merges it, and every search reads that list whole. 4 MB of pending
cards (a bulk import) made a search at 100,000 cards some 40 ms; 256 kB keeps it at a few
milliseconds while bulk inserts stay almost as fast (``fastupdate = off`` made a COPY 7x slower).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(
        "CREATE INDEX cards_cardnumber_trgm_idx ON cards USING gin (cardnumber gin_trgm_ops)"
        " WITH (gin_pending_list_limit = 256)"
    )
    op.execute(
        "CREATE INDEX cards_notes_trgm_idx ON cards USING gin (notes gin_trgm_ops) WITH (gin_pending_list_limit = 256)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX cards_notes_trgm_idx")
    op.execute("DROP INDEX cards_cardnumber_trgm_idx")
    # The extension stays: dropping it could break objects created since that use it.
