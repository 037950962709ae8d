"""Usage metering: what tenants use (API calls, sizes, storage), kept for quotas, billing and metrics."""
