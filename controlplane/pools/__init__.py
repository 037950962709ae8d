"""TenantPools: the bounded LRU of per-tenant connection pools that serves tenant API traffic.

HTTP-free (the tenant API's wiring stands on it); ``GET /admin/pools`` is ``metrics/routes.py``.
"""
