"""Per-tenant backups: ``pg_dump -Fc`` streamed, sealed, into the object store; tested restores."""
