"""What the control plane exposes to Prometheus (``/metrics``) and operators (``/admin/pools``).

``service.CardVaultMetrics`` renders in-memory state only (the usage snapshot, pools, registry cache,
jobs, quota alerts, tenant health); ``families`` builds the metric families; ``requests.HttpMetrics``
counts HTTP requests by route template; ``routes`` serves them.
"""
