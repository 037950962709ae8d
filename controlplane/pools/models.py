"""What TenantPools exposes: the constants tenant connections carry and the stats snapshot."""

from __future__ import annotations

import msgspec

#: ``application_name`` of every tenant connection, so they can be counted in ``pg_stat_activity``.
APPLICATION_NAME = "cardvault-tenant"

#: Per-statement limit on tenant API connections, in seconds: an API request that runs longer is a bug
#: or an abuse, and must not hold a connection of the shared budget.
STATEMENT_TIMEOUT = 30.0


class PoolStats(msgspec.Struct):
    """A snapshot of the tenant pools (counters since start-up, gauges now), for ``/metrics``."""

    #: Requests served by a pool already in the LRU.
    hits: int
    #: Requests that had to create a pool (or wait for its creation by a concurrent request).
    misses: int
    #: Pools dropped from the LRU to respect ``capacity`` or ``connection_budget``.
    evictions: int
    #: Pools dropped by ``invalidate()`` (suspend, delete, move, credentials change).
    invalidations: int
    #: Pools not yet closed: those in the LRU and evicted ones still draining in-flight connections.
    open_pools: int
    #: Connections the pools hold or are opening.
    connections_open: int
    #: Connections checked out by requests.
    connections_in_use: int
    #: Connections idle in the pools.
    connections_idle: int
    #: Requests waiting: in the pools' queues, or for their pool to be created (budget, lookup).
    requests_waiting: int
    #: ``connection_budget``: connections across all pools at most.
    budget: int
    #: ``capacity``: pools in the LRU at most.
    capacity: int
