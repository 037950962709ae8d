"""Accounts: how a credential is obtained (``/auth/*`` logins, refreshes, logouts and invitations, and a
super-admin's impersonation: ``login_routes``), and one tenant's accounts: the caller's profile,
password and sessions (``/me``), users and invitations (``/users``), API keys (``/api-keys``) and the
tenant's settings (``/settings``).

``routes.ACCOUNT_HANDLERS`` is what the app mounts next to the CardVault API; ``service.Accounts`` holds
the rules, ``guards`` the rules about who may hand out what, ``models`` the request and response types,
``repository`` the SQL (the user rows and lookups authentication needs are ``auth.tenant_repository``).
"""
