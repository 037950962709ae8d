"""Authentication: passwords, sessions, access tokens, API keys, impersonation, the permission model,
and abuse protection (rate limiting, login throttling).

HTTP-free (the tenant API's wiring stands on it): the endpoints that hand credentials out (``/auth/*``,
impersonation) are ``accounts/login_routes.py``.
"""
