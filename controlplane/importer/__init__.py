"""Legacy import: single-tenant CardVault SQLite installations moved into a tenant."""
