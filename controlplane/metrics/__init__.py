"""What the control plane exposes to Prometheus (``/metrics``, ``/metrics/tenants``) and operators (``/admin/pools``).

``service.CardVaultMetrics`` renders in-memory state only (the usage snapshot, pools, registry cache,
jobs, quota alerts, tenant health) from the ``sources`` it is bound to; ``families`` builds the metric
families; ``cached`` keeps the text of those built from replaced-whole sources, aggregates and per-tenant
series apart; ``requests.HttpMetrics`` counts HTTP requests by route template; ``routes`` serves them.
"""
