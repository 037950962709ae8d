"""API calls per tenant: the hourly rate limit (the ``api_calls_per_hour`` quota) and the usage count.

Every authenticated tenant API call is admitted here. The limit is a fixed window of one hour on a
counter shared by all instances when ``CARDVAULT_REDIS_URL`` is set (in-process otherwise). Admitted
calls are also counted in memory per tenant and hour and added to ``tenant_api_calls`` by ``flush`` (a
job of every instance; each adds its own counts, so nothing is counted twice); a refused call (429) is
not counted: it is neither usage nor billable overage.

The limit is the enforced one (``quota_repository.enforced_limit``): for a tenant paying for a plan with
billing on, up to ``ceiling`` times its hourly limit, the calls over the plan's limit being billed as
overage by metering. If the shared counter (Redis) is unreachable, calls are admitted (logged): rate
limiting is not worth an outage. With Redis, calls reach the shared count in batches while a tenant is
far from its limit (``auth.batched_limit``): no round trip per call. The limit itself is read from the
registry at most once a minute per tenant (a bounded cache): a quota or subscription change takes
effect within a minute on every instance without a registry query per request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable

from psycopg_pool import AsyncConnectionPool

from controlplane.auth.batched_limit import BatchedLimiter
from controlplane.auth.ratelimit import Decision, LimiterUnavailable, RateLimiter
from controlplane.db import AsyncConn
from controlplane.errors import TooManyRequests
from controlplane.registry.models import QuotaType
from controlplane.usage import quota_repository, repository

log = logging.getLogger(__name__)

HOUR = 3600
#: Seconds a tenant's limit is cached.
LIMIT_TTL = 60.0
#: Tenants whose limit (and limiter key) is cached at most; past it, expired entries go, then all.
MAX_CACHED = 100_000


class ApiCalls:
    def __init__(
        self,
        limiter: RateLimiter | BatchedLimiter,
        control: AsyncConnectionPool[AsyncConn],
        *,
        ceiling: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limiter = limiter
        self._control = control
        self._ceiling = ceiling
        self._clock = clock
        self._limits: dict[uuid.UUID, tuple[int | None, float]] = {}
        self._keys: dict[uuid.UUID, str] = {}  # the limiter's key of each tenant (formatting a UUID costs)
        self._counts: Counter[tuple[uuid.UUID, int]] = Counter()

    async def _load_limit(self, tenant_id: uuid.UUID, now: float) -> int | None:
        async with self._control.connection() as conn:
            value = await quota_repository.enforced_limit(
                conn, tenant_id, QuotaType.API_CALLS_PER_HOUR, ceiling=self._ceiling
            )
        if len(self._limits) >= MAX_CACHED and tenant_id not in self._limits:
            self._limits = {k: v for k, v in self._limits.items() if v[1] > now}
            if len(self._limits) >= MAX_CACHED:
                self._limits.clear()
        self._limits[tenant_id] = (value, now + LIMIT_TTL)
        return value

    def forget(self, tenant_id: uuid.UUID) -> None:
        """Drop the cached limit (the tenant's quotas changed here)."""
        self._limits.pop(tenant_id, None)

    def _key(self, tenant_id: uuid.UUID) -> str:
        """The limiter's key of the tenant (cached: formatting a UUID costs)."""
        key = self._keys.get(tenant_id)
        if key is None:
            if len(self._keys) >= MAX_CACHED:
                self._keys.clear()
            key = self._keys[tenant_id] = f"api:{tenant_id}"
        return key

    async def admit(self, tenant_id: uuid.UUID) -> Decision | None:
        """Admit and count one call; 429 ``TooManyRequests`` (not counted) when the tenant is over its
        hourly limit.

        Returns the decision (for the ``RateLimit-*`` headers), or None for an unlimited tenant.
        """
        now = self._clock()
        cached = self._limits.get(tenant_id)
        limit = cached[0] if cached is not None and cached[1] > now else await self._load_limit(tenant_id, now)
        hour = int(now // HOUR) * HOUR
        if limit is None:
            self._counts[(tenant_id, hour)] += 1
            return None
        try:
            decision = await self._limiter.hit(self._key(tenant_id), limit, HOUR)
        except LimiterUnavailable as exc:
            # Fail open: a dead Redis must not take every tenant's API down; the login throttle,
            # which guards against brute force, fails closed instead.
            log.warning("rate limiter unavailable, admitting the call: %s", exc.detail)
            self._counts[(tenant_id, hour)] += 1
            return None
        if not decision.allowed:
            raise TooManyRequests(
                f"the tenant's API limit of {limit} calls per hour is used up",
                headers=decision.headers(),
                limit=limit,
                retry_after=decision.reset_after,
            )
        self._counts[(tenant_id, hour)] += 1
        return decision

    def pending(self) -> dict[tuple[uuid.UUID, int], int]:
        """Calls counted here and not yet flushed, by (tenant, hour start)."""
        return dict(self._counts)

    async def flush(self, conn: AsyncConn) -> int:
        """Add the counted calls to ``tenant_api_calls``; the number of rows written. Also adds the calls
        a ``BatchedLimiter`` holds to the shared count."""
        if isinstance(self._limiter, BatchedLimiter):
            try:
                await self._limiter.flush()
            except LimiterUnavailable as exc:
                log.warning("rate limiter unavailable, its pending calls are kept: %s", exc.detail)
        counts, self._counts = self._counts, Counter()
        try:
            async with conn.transaction():
                for (tenant_id, hour), calls in counts.items():
                    await repository.add_api_calls(conn, tenant_id, hour, calls)
        except BaseException:
            self._counts.update(counts)  # keep them for the next flush
            raise
        return len(counts)
