"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Tenant schema revision: plain PostgreSQL DDL through op.execute, with a working downgrade().
No roles or grants here (the control plane grants privileges after migrating) and no tenant_id
columns (the database is the tenant boundary).

`migrate tenants` renders upgrade() to SQL once and runs the text in every tenant database, in one
transaction with the version update. If upgrade() must read data in Python (op.get_bind()), set
offline_safe = False below: that revision then runs through alembic online, tenant by tenant.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}
# offline_safe = False  # only if upgrade() reads data in Python (see above)


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
