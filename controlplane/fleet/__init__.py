"""The fleet: PostgreSQL servers that host tenant databases, their connections and placement.

HTTP-free: the platform layer (``Platform``, the registry cache) stands on it, so its admin API
(``/admin/servers``) is ``provisioning/server_routes.py``.
"""
