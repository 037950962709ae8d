"""Backup planning (``controlplane.backups.schedule``) on an injected clock, and the per-server bound.

A day of job runs over a thousand tenants: each is backed up once a day at its own stable time, the starts
are spread over the day (never all at once, the first round included), due tenants only; failures wait
before a retry; open backups, tiers without a schedule and tenants neither active nor suspended are never
planned; servers are interleaved; ``ServerSlots`` never lets more than its limit run on one server.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from controlplane.backups.leases import ServerSlots
from controlplane.backups.models import TenantBackupState
from controlplane.backups.schedule import is_due, is_stale, plan, retry_after, stagger_offset
from controlplane.settings import BackupSchedule

DAY = 86400.0
JOB = 300.0
SCHEDULES = {
    "starter": BackupSchedule(DAY, 7 * DAY),
    "professional": BackupSchedule(DAY, 30 * DAY),
    "enterprise": BackupSchedule(6 * 3600.0, 90 * DAY),
}
T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SERVERS = [uuid.UUID(int=1), uuid.UUID(int=2)]


def state(n: int = 0, **fields: object) -> TenantBackupState:
    base = TenantBackupState(
        tenant_id=uuid.uuid5(uuid.NAMESPACE_OID, f"tenant-{n}"),
        slug=f"t{n}",
        tier="starter",
        status="active",
        server_id=SERVERS[n % 2],
        created_at=T0 - timedelta(days=400),
        last_requested=None,
        last_failed=None,
        last_succeeded=None,
    )
    return msgspec.structs.replace(base, **fields)


def test_offsets_are_stable_and_spread_over_the_interval() -> None:
    ids = [uuid.uuid5(uuid.NAMESPACE_OID, str(i)) for i in range(1000)]
    offsets = [stagger_offset(i, DAY) for i in ids]
    assert offsets == [stagger_offset(i, DAY) for i in ids]
    assert all(0 <= o < DAY for o in offsets)
    per_hour = collections.Counter(int(o // 3600) for o in offsets)
    assert len(per_hour) == 24 and min(per_hour.values()) >= 20 and max(per_hour.values()) <= 70


def simulate(states: dict[uuid.UUID, TenantBackupState], start: datetime, runs: int) -> list[list[uuid.UUID]]:
    """``runs`` job runs every 5 minutes from ``start``; each planned backup is requested (and succeeds) at
    once. The tenants planned at each run."""
    planned_per_run = []
    for k in range(runs):
        now = start + timedelta(seconds=k * JOB)
        planned = plan(list(states.values()), SCHEDULES, now, job_interval=JOB)
        for s in planned:
            states[s.tenant_id] = msgspec.structs.replace(s, last_requested=now, last_succeeded=now)
        planned_per_run.append([s.tenant_id for s in planned])
    return planned_per_run


def test_a_thousand_tenants_are_backed_up_once_a_day_each_at_its_own_time() -> None:
    states = {s.tenant_id: s for s in (state(n) for n in range(1000))}
    runs = simulate(states, T0, 2 * int(DAY // JOB))  # two days
    assert max(len(run) for run in runs) <= 15  # ~3.5 a run on average: never a stampede, nor in the first round
    times: dict[uuid.UUID, list[float]] = collections.defaultdict(list)
    for k, run in enumerate(runs):
        for tenant in run:
            times[tenant].append(k * JOB)
    assert sorted(times) == sorted(states)
    first_day = {t: [x for x in xs if x < DAY] for t, xs in times.items()}
    assert all(1 <= len(xs) <= 2 for xs in first_day.values())
    for xs in times.values():
        # Once a day, at the same time give or take a job run (the very first may be up to two runs late:
        # the slots of the last two runs count for a tenant never backed up).
        gaps = [b - a for a, b in itertools.pairwise(xs)]
        assert gaps and all(DAY - 2 * JOB <= g <= DAY + JOB for g in gaps), gaps
        assert xs[0] < DAY


def test_a_new_tenant_waits_for_its_first_slot_and_not_longer() -> None:
    created = T0 + timedelta(hours=5, minutes=3)
    new = state(7, created_at=created)
    offset = stagger_offset(new.tenant_id, DAY)
    runs = simulate({new.tenant_id: new}, created, int(DAY // JOB) + 1)
    [run] = [k for k, planned in enumerate(runs) if planned]
    when = created + timedelta(seconds=run * JOB)
    slot = (when.timestamp() - offset) % DAY
    assert slot < JOB  # at its slot, within one job run


def test_only_due_tenants_are_planned() -> None:
    now = T0 + timedelta(days=10)
    offset_of = {n: stagger_offset(state(n).tenant_id, DAY) for n in range(8)}

    def slot_before(n: int) -> datetime:
        """The tenant's latest slot at or before ``now``."""
        since = (now.timestamp() - offset_of[n]) % DAY
        return now - timedelta(seconds=since)

    recent = state(0, last_requested=slot_before(0) + timedelta(seconds=1))
    overdue = state(1, last_requested=slot_before(1) - timedelta(seconds=1))
    open_one = state(2, last_requested=now - timedelta(days=3), open=True)
    suspended = state(3, status="suspended", last_requested=now - timedelta(days=3))
    deleting = state(4, status="deleting", last_requested=now - timedelta(days=3))
    unknown_tier = state(5, tier="legacy", last_requested=now - timedelta(days=3))
    failed_now = state(6, last_requested=now - timedelta(days=3), last_failed=now - timedelta(minutes=10))
    failed_earlier = state(7, last_requested=now - timedelta(days=3), last_failed=now - timedelta(hours=2))
    states = [recent, overdue, open_one, suspended, deleting, unknown_tier, failed_now, failed_earlier]
    assert {s.slug for s in plan(states, SCHEDULES, now, job_interval=JOB)} == {"t1", "t3", "t7"}
    assert retry_after(SCHEDULES["starter"], JOB) == 3600.0
    assert retry_after(SCHEDULES["enterprise"], JOB) == 3600.0
    assert retry_after(BackupSchedule(600.0, DAY), JOB) == JOB
    # A success after a failure counts as the newest backup again.
    healed = state(6, last_failed=now - timedelta(minutes=10), last_requested=now - timedelta(minutes=5))
    assert not is_due(healed, SCHEDULES["starter"], now, job_interval=JOB)


def test_enterprise_tenants_are_backed_up_four_times_a_day() -> None:
    tenant = state(1, tier="enterprise")
    runs = simulate({tenant.tenant_id: tenant}, T0, int(DAY // JOB))
    assert sum(len(r) for r in runs) == 4


def test_servers_are_interleaved() -> None:
    now = T0 + timedelta(days=3)
    states = [state(n, server_id=SERVERS[0 if n < 6 else 1], last_requested=now - timedelta(days=2)) for n in range(8)]
    planned = plan(states, SCHEDULES, now, job_interval=JOB)
    assert [s.server_id for s in planned][:4] == [SERVERS[0], SERVERS[1], SERVERS[0], SERVERS[1]]
    assert len(planned) == 8


def test_stale_means_no_success_within_the_factor_of_intervals() -> None:
    now = T0 + timedelta(days=30)
    schedule = SCHEDULES["starter"]
    assert is_stale(state(0, last_succeeded=now - timedelta(days=2, seconds=1)), schedule, now, 2.0)
    assert not is_stale(state(0, last_succeeded=now - timedelta(days=1)), schedule, now, 2.0)
    assert is_stale(state(0), schedule, now, 2.0)  # never backed up, created long ago
    assert not is_stale(state(0, created_at=now - timedelta(hours=3)), schedule, now, 2.0)
    assert not is_stale(state(0), None, now, 2.0)  # no schedule for its tier


async def test_server_slots_bound_each_server() -> None:
    slots = ServerSlots(2)
    running: collections.Counter[uuid.UUID] = collections.Counter()
    peak: collections.Counter[uuid.UUID] = collections.Counter()
    peak_total = 0
    gate = asyncio.Event()

    async def backup(server: uuid.UUID) -> None:
        nonlocal peak_total
        async with slots.hold(server):
            running[server] += 1
            peak[server] = max(peak[server], running[server])
            peak_total = max(peak_total, sum(running.values()))
            await gate.wait()
            await asyncio.sleep(0)
            running[server] -= 1

    tasks = [asyncio.create_task(backup(SERVERS[n % 2])) for n in range(10)]
    await asyncio.sleep(0.01)
    assert sum(running.values()) == 4  # two per server, the other six wait
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == {SERVERS[0]: 2, SERVERS[1]: 2} and peak_total == 4
