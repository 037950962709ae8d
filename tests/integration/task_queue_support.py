"""What the task-queue fan-out tests share: fast worker settings, the services a worker runs with, the
queue's jobs, and ``cardvault worker`` subprocesses killed at a failpoint."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from controlplane.backups.service import BackupService
from controlplane.billing.provider import BillingProvider
from controlplane.platform import Platform
from controlplane.settings import Settings, TaskQueueSettings
from controlplane.tasks.definitions import Services
from controlplane.usage.collector import Collector
from tests.integration.cli_support import CARDVAULT, cli_env
from tests.processes import die_with_parent, stop, track

#: Short enough that a dead worker is noticed within a couple of seconds.
FAST = TaskQueueSettings(concurrency=2, heartbeat=0.2, stalled_after=1.0)


def fast(settings: Settings) -> Settings:
    return settings.replace(tasks=FAST)


def services(
    platform: Platform, *, billing: BillingProvider | None = None, backups: BackupService | None = None
) -> Services:
    """What a worker runs tasks with: a collector, ``backups`` (a new BackupService unless given), ``billing``."""
    collector = Collector(
        platform.fleet, platform.settings.database, concurrency=2, storage_root=platform.settings.data_dir / "storage"
    )
    return Services(platform, collector, backups or BackupService(platform), billing=billing)


async def jobs(platform: Platform, task: str) -> list[dict[str, Any]]:
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT id, status::text AS status, lock, queueing_lock, args, attempts"
            " FROM procrastinate.procrastinate_jobs WHERE task_name = %s ORDER BY id",
            (task,),
        )
        return list(await cur.fetchall())


async def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        started = asyncio.to_thread(
            subprocess.Popen, [CARDVAULT, "worker"], env=env, stdout=out, stderr=out, preexec_fn=die_with_parent
        )
        return track(await started)


async def wait_killed(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        stop(proc)
    if code != -9:  # it should have killed itself at the failpoint
        raise AssertionError(f"exit {code}:\n{await asyncio.to_thread(log.read_text)}")


async def worker_killed_at(
    failpoint: str, control_dsn: str, template: str, data_dir: Path, log: Path, **extra_env: str
) -> None:
    """Run ``cardvault worker`` (heartbeats as ``FAST``) until it kills itself at ``failpoint``."""
    env = cli_env(
        control_dsn,
        template,
        data_dir,
        CARDVAULT_WORKER_HEARTBEAT=str(FAST.heartbeat),
        CARDVAULT_WORKER_STALLED_AFTER=str(FAST.stalled_after),
        CARDVAULT_FAILPOINTS=f"{failpoint}=kill",
        **extra_env,
    )
    await wait_killed(await spawn_worker(env, log), log)
