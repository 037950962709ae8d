"""The CardVault tenant API: cards, players, teams and manufacturers, served from each tenant's own database.

``routes.TENANT_API_HANDLERS`` is what the app mounts; ``service.CardVault`` holds the logic,
``repository`` all SQL, ``models`` the request and response types, ``images`` the upload checks.
"""
