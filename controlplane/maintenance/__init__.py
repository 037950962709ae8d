"""Keeping tenant databases healthy: health checks as the tenant's role, slow queries, VACUUM / ANALYZE."""
