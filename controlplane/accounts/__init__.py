"""Accounts of one tenant: the caller's profile, password and sessions (``/me``), users and invitations
(``/users``), API keys (``/api-keys``) and the tenant's settings (``/settings``).

``routes.ACCOUNT_HANDLERS`` is what the app mounts next to the CardVault API; ``service.Accounts`` holds
the rules, ``models`` the request and response types. The SQL lives in ``auth.tenant_repository``
(identities) and ``repository`` (what only the accounts rules need).
"""
