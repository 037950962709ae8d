"""TenantPools: the bounded LRU of per-tenant connection pools that serves tenant API traffic."""
