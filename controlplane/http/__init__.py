"""The HTTP layer every API module shares: ``app.state`` keys, error handlers, request context and
response headers, the tenant API's wiring (middleware, ``TenantRequest`` dependency, permissions), the
admin guard, the shared query parameters and the health probes.

Route modules (``<domain>/routes.py``) may import it; services never do.
"""
