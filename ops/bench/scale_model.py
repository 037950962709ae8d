"""The model of the scale benchmark (``scale.py``): from what one run measured to the servers and control-plane
processes a target number of tenants needs.

Every input is either measured in the run (``Measured``) or an assumption passed on the command line
(``Assumptions``, printed with the result); nothing else goes in. Growth with the number of tenants or
databases is taken as linear (least squares over the measured points) and extrapolated to the target:
the output says so next to each extrapolated figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from collections.abc import Sequence

from scale_process import ProcessReading
from scale_server import Creation, Probe

#: ``TenantCache`` keeps at most this many resolved tenants (``controlplane.routing.cache``).
CACHE_MAX_ENTRIES = 50_000


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ``y`` over ``x``; slope 0 with a single distinct ``x``."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


@dataclasses.dataclass
class Measured:
    on: list[ProcessReading]
    off: list[ProcessReading]
    empty_db_bytes: int
    empty_db_files: int | None
    before: Probe
    after: Probe
    creation: Creation
    max_connections: int
    reserved_connections: int
    budget: int
    capacity: int
    per_tenant_max: int


@dataclasses.dataclass
class Assumptions:
    target: int
    avg_tenant_mb: float
    server_disk_gb: float
    disk_fill: float
    active_fraction: float
    conns_per_active: float
    server_max_connections: int
    server_reserve: int
    max_clone_growth_ms: float
    max_idle_cpu: float
    max_dbs_per_server: int
    rps_per_tenant: float
    hot_rps: float
    miss_rps: float
    hit_ratio: float
    process_memory_mib: float
    metrics_budget_mib: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Assumptions:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _cap(v0: float, d0: float, slope: float, budget: float) -> float:
    """Where a quantity growing linearly from ``v0`` at ``d0`` reaches ``budget`` (inf if it does not grow)."""
    if v0 >= budget:
        return d0
    return math.inf if slope <= 0 else d0 + (budget - v0) / slope


def _at(v0: float, slope: float, x: float) -> float:
    """``v0 + slope * x``; a negative slope (noise between readings) counts as none."""
    return v0 + max(0.0, slope) * x


def _n(value: float) -> str:
    return "no limit seen" if math.isinf(value) else f"{value:,.0f}"


def report(m: Measured, a: Assumptions) -> None:
    t = a.target
    kib = 1024.0
    # -- control-plane process
    rss0, per_registered = fit([(r.registered, r.rss_warm_kib) for r in m.on])
    ready_rss0, per_registered_ready = fit([(r.registered, r.rss_ready_kib) for r in m.on])
    _off0, per_registered_off = fit([(r.registered, r.rss_warm_kib) for r in m.off])
    ready0, ready_slope = fit([(r.registered, r.start_seconds) for r in m.on])
    first0, first_slope = fit([(r.registered, r.metrics_first_ms) for r in m.on])
    sampled = [r.kib_per_cached for r in m.on if r.sampled]
    per_cached = statistics.median(sampled) if sampled else 0.0
    actives = [r.kib_per_active for r in m.on if r.active]
    per_active = statistics.median(actives) if actives else 0.0
    cached = min(t, CACHE_MAX_ENTRIES)
    rss_t = _at(rss0, per_registered, t) + per_cached * cached + per_active * m.capacity
    room = a.process_memory_mib * kib - rss0 - per_cached * CACHE_MAX_ENTRIES - per_active * m.capacity
    max_registered = room / per_registered if per_registered > 0 else math.inf
    effective_rps = 1 / (a.hit_ratio / a.hot_rps + (1 - a.hit_ratio) / a.miss_rps)
    demand_rps = t * a.rps_per_tenant
    by_throughput = math.ceil(demand_rps / effective_rps)
    processes = max(2, by_throughput + 1)  # one spare: a replica may fail or restart
    # -- /metrics
    m_on0, m_on = fit([(r.registered, r.metrics_bytes) for r in m.on])
    s_on0, s_on = fit([(r.registered, r.metrics_series) for r in m.on])
    p_on0, p_on = fit([(r.registered, r.metrics_p50) for r in m.on])
    m_off0, m_off = fit([(r.registered, r.metrics_bytes) for r in m.off])
    s_off0, s_off = fit([(r.registered, r.metrics_series) for r in m.off])
    p_off0, p_off = fit([(r.registered, r.metrics_p50) for r in m.off])
    budget = a.metrics_budget_mib * kib * kib
    # -- one database server
    d0, d1 = m.before.databases, m.after.databases
    span = max(1, d1 - d0)
    c0, c1 = statistics.median(m.before.clone_ms), statistics.median(m.after.clone_ms)
    clone_slope = (c1 - c0) / span
    # The rise over the first reading, not the clone time itself: that one moves with the disk's load.
    cap_clone = _cap(0.0, d0, clone_slope, a.max_clone_growth_ms)
    cap_cpu = math.inf
    cpu_slope = 0.0
    if m.before.idle_cpu_percent is not None and m.after.idle_cpu_percent is not None:
        cpu_slope = (m.after.idle_cpu_percent - m.before.idle_cpu_percent) / span
        cap_cpu = _cap(m.before.idle_cpu_percent, d0, cpu_slope, a.max_idle_cpu)
    dbs_per_server = min(cap_clone, cap_cpu, a.max_dbs_per_server)
    shared_per_1k = (m.after.shared_catalog_bytes - m.before.shared_catalog_bytes) / span * 1000
    per_db_disk = (
        (m.after.base_bytes - m.before.base_bytes) / span
        if m.after.base_bytes is not None and m.before.base_bytes is not None
        else float(m.empty_db_bytes)
    )
    tenant_bytes = per_db_disk + a.avg_tenant_mb * kib * kib
    by_disk = math.ceil(t * tenant_bytes / (a.server_disk_gb * kib**3 * a.disk_fill))
    usable = a.server_max_connections - m.reserved_connections - a.server_reserve
    conn_demand = min(t * a.active_fraction * a.conns_per_active, processes * m.budget)
    by_connections = math.ceil(conn_demand / max(1, usable))
    by_databases = math.ceil(t / dbs_per_server)
    servers = max(by_disk, by_connections, by_databases)
    create_rate = m.creation.count / m.creation.seconds if m.creation.seconds else 0.0

    print()
    print(f"Model for {t:,} tenants (measured figures, then the assumptions; growth extrapolated linearly):")
    print()
    print("| Quantity | Measured here | At the target |")
    print("|---|---|---:|")
    points = ", ".join(f"{r.registered:,}" for r in m.on)
    print(
        f"| control-plane RSS, warm | {rss0 / kib:.0f} MiB + **{per_registered:.2f} KiB per registered tenant** "
        f"(fit over N = {points}) | {(rss0 + per_registered * t) / kib:,.0f} MiB |"
    )
    print(
        f"| of which when ready (usage snapshot, quota limits, backups' standing loaded) | {ready_rss0 / kib:.0f} MiB "
        f"+ {per_registered_ready:.2f} KiB per registered tenant | "
        f"{_at(ready_rss0, per_registered_ready, t) / kib:,.0f} MiB |"
    )
    print(
        f"| warm with per-table series off | {per_registered_off:.2f} KiB per registered tenant | "
        f"{_at(_off0, per_registered_off, t) / kib:,.0f} MiB |"
    )
    print(
        f"| + per resolved tenant (cache entry, bounded to {CACHE_MAX_ENTRIES:,}) | {per_cached:.2f} KiB | "
        f"{per_cached * cached / kib:,.0f} MiB |"
    )
    print(
        f"| + per active tenant (open pool; capacity {m.capacity}) | {per_active:.1f} KiB | "
        f"{per_active * m.capacity / kib:,.0f} MiB |"
    )
    print(
        f"| RSS of one process, everything warm | | **{rss_t / kib:,.0f} MiB** (limit {a.process_memory_mib:,.0f} MiB: "
        f"{'fits' if rss_t <= a.process_memory_mib * kib else 'DOES NOT FIT'}; it fits up to {_n(max_registered)} "
        "registered) |"
    )
    print(
        f"| start to ready | {ready0:.1f} s + {ready_slope * 10_000:.2f} s per 10,000 registered | "
        f"{_at(ready0, ready_slope, t):,.0f} s |"
    )
    print(
        f"| first /metrics after start (renders the per-tenant text, off the event loop) | {first0:.0f} ms + "
        f"{first_slope * 1000:.0f} ms per 1,000 | {_at(first0, first_slope, t) / 1000:,.1f} s |"
    )
    for label, b0, bs, s0, ss, q0, qs in (
        ("on", m_on0, m_on, s_on0, s_on, p_on0, p_on),
        ("off (`CARDVAULT_METRICS_PER_TABLE=0`)", m_off0, m_off, s_off0, s_off, p_off0, p_off),
    ):
        print(
            f"| /metrics, per-table series {label} | {bs:,.0f} B and {ss:.1f} series per tenant; scrape p50 "
            f"{q0:.1f} ms + {qs * 1000:.2f} ms per 1,000 | {_at(b0, bs, t) / kib / kib:,.1f} MiB, "
            f"{_at(s0, ss, t):,.0f} series, p50 {_at(q0, qs, t):,.0f} ms |"
        )
    low, high = m.on[0], m.on[-1]
    if high.registered > low.registered:
        growth = {
            name: (count - low.families.get(name, 0)) / (high.registered - low.registered)
            for name, count in high.families.items()
        }
        per_tenant = ", ".join(
            f"`{name}` {v:.1f}" for name, v in sorted(growth.items(), key=lambda i: -i[1]) if v >= 0.05
        )
        print(f"| /metrics series per registered tenant, by family (per-table on) | {per_tenant} | |")
    files = f", {m.empty_db_files} files" if m.empty_db_files is not None else ""
    print(
        f"| empty tenant database | {m.empty_db_bytes / kib / kib:.1f} MiB (pg_database_size){files}; "
        f"{per_db_disk / kib / kib:.1f} MiB on disk per database created | "
        f"{t * per_db_disk / kib**3:,.0f} GiB before any data |"
    )
    print(
        f"| tenant creation (service, {m.creation.count:,}) | {create_rate:.1f}/s; "
        f"{m.creation.wal_bytes / m.creation.count / kib / kib:.1f} MiB of WAL each | "
        f"{t / max(create_rate, 1e-9) / 3600:,.1f} h on one server at that rate; "
        f"{t * m.creation.wal_bytes / m.creation.count / kib**3:,.0f} GiB of WAL |"
    )
    print(
        f"| raw clone p50 | {c0:.1f} ms at {d0:,} databases, {c1:.1f} ms at {d1:,} "
        f"({clone_slope * 1000:+.1f} ms per 1,000) | +{a.max_clone_growth_ms:,.0f} ms reached at {_n(cap_clone)} "
        "databases |"
    )
    if m.before.idle_cpu_percent is not None and m.after.idle_cpu_percent is not None:
        print(
            f"| idle server CPU (autovacuum {m.before.idle_seconds:.0f} s windows) | "
            f"{m.before.idle_cpu_percent:.1f}% at {d0:,}, {m.after.idle_cpu_percent:.1f}% at {d1:,} of one core | "
            f"{a.max_idle_cpu:.0f}% reached at {_n(cap_cpu)} databases |"
        )
    print(f"| shared catalogs | +{shared_per_1k / kib:,.0f} KiB per 1,000 databases | |")
    if m.empty_db_files is not None and not math.isinf(dbs_per_server):
        print(
            f"| files per server | {m.empty_db_files} per empty database | "
            f"{m.empty_db_files * dbs_per_server:,.0f} at {dbs_per_server:,.0f} databases |"
        )
    print(
        f"| tenant connect p50 | {statistics.median(m.before.connect_ms):.1f} ms at {d0:,}, "
        f"{statistics.median(m.after.connect_ms):.1f} ms at {d1:,} databases | |"
    )
    print(
        f"| connections | max_connections {m.max_connections} (reserved {m.reserved_connections}); budget "
        f"{m.budget} per process, {m.per_tenant_max} per tenant pool | |"
    )
    print()
    print(
        f"Assumptions: average data per tenant {a.avg_tenant_mb:g} MB; {a.server_disk_gb:g} GB per server filled to "
        f"{a.disk_fill:.0%}; {a.active_fraction:.1%} of tenants active at once with {a.conns_per_active:g} "
        f"connection(s) each; max_connections {a.server_max_connections} per server, {a.server_reserve} kept for the "
        f"leader's jobs, backups and replication; clone p50 at most "
        f"{a.max_clone_growth_ms:g} ms above the first reading; idle server CPU at most "
        f"{a.max_idle_cpu:g}% of a core; at most {a.max_dbs_per_server:,} databases per server in any case; "
        f"{a.rps_per_tenant:g} req/s per tenant at peak; a process serves {a.hot_rps:g} req/s on pool hits and "
        f"{a.miss_rps:g} on misses, hit ratio {a.hit_ratio:.0%}; {a.process_memory_mib:g} MiB per process; "
        f"/metrics at most {a.metrics_budget_mib:g} MiB per scrape."
    )
    print()
    print("| Sizing | Formula | Result |")
    print("|---|---|---:|")
    print(f"| servers by disk | ceil(T x (disk per database + average data) / (disk x fill)) | {by_disk:,} |")
    print(
        f"| servers by connections | ceil(min(T x active x conns, processes x budget) / (max_connections - reserved "
        f"- kept)) = ceil({conn_demand:,.0f} / {usable}) | {by_connections:,} |"
    )
    print(
        f"| servers by databases | ceil(T / min(clone cap, idle CPU cap, ceiling)) = ceil(T / "
        f"{_n(dbs_per_server)}) | {by_databases:,} |"
    )
    print(f"| **database servers** | max of the three | **{servers:,}** ({math.ceil(t / servers):,} tenants each) |")
    print(
        f"| processes by throughput | ceil(T x req/s per tenant / (1 / (hit / hot + miss share / miss))) + 1 spare "
        f"= ceil({demand_rps:,.0f} / {effective_rps:,.0f}) + 1 | {processes:,} |"
    )
    print(
        f"| processes by memory | every process holds every registered tenant: RSS at T must fit | "
        f"{'fits' if rss_t <= a.process_memory_mib * kib else 'does not fit: more memory per process'} "
        f"({rss_t / kib:,.0f} MiB each, {processes * rss_t / kib / kib:,.1f} GiB in all) |"
    )
    n_on = _cap(m_on0, 0, m_on, budget)
    n_off = _cap(m_off0, 0, m_off, budget)
    separate = m.on[-1].tenant_series == "separate"  # --tenant-series separate: /metrics holds the aggregates
    advice = (
        "per-tenant series in /metrics/tenants: /metrics does not grow with the tenants (its slope is noise)"
        if separate
        else f"turn per-table series off past {_n(n_on)}; past {_n(n_off)} the per-tenant series alone exceed it: "
        "`CARDVAULT_METRICS_TENANT_SERIES=separate` (or `off`)"
    )
    print(
        f"| /metrics | {a.metrics_budget_mib:g} MiB per scrape reached at {_n(n_on)} tenants with per-table series, "
        f"{_n(n_off)} without | {advice} |"
    )
    if separate:
        for label, readings in (("on", m.on), ("off", m.off)):
            b0, bs = fit([(r.registered, r.tenants_bytes) for r in readings])
            print(
                f"| /metrics/tenants, per-table series {label} | {bs:,.0f} B per tenant | "
                f"{_at(b0, bs, t) / kib / kib:,.1f} MiB per scrape (scrape it every 2 min, not 30 s) |"
            )
