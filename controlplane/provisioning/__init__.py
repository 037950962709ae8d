"""The tenant lifecycle: provisioning by template clone, suspend / resume / delete / purge, the operations
ledger (``tenant_operations``), the reconciler, and the admin API of tenants and of the fleet's servers."""
