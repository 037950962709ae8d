"""Running the tenant schema across the fleet: templates first, then every tenant database with bounded
concurrency, each outcome recorded as it happens (the schemas themselves are ``controlplane.schemas``)."""
