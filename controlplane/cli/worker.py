"""``cardvault worker``: a task-queue worker without the HTTP service.

Runs the per-tenant work the leader's jobs enqueue (usage collection, backups, overage reports) and the
schema upgrades ``migrate tenants --queue`` enqueues, next to, or instead of, the workers inside ``cardvault
serve`` processes (``CARDVAULT_WORKER=0`` turns those off). Any number may run, on any machine that reaches
the control database; SIGTERM or Ctrl-C lets running tasks finish for a few seconds, then hands them back
to the queue.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

import click

from controlplane.cli.common import with_platform

if TYPE_CHECKING:
    from controlplane.platform import Platform


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Tasks at once (default CARDVAULT_WORKER_CONCURRENCY).")
def worker(concurrency: int | None) -> None:
    """Run a task-queue worker (no HTTP) until SIGTERM or Ctrl-C."""
    import dataclasses

    from controlplane.backups.service import BackupService
    from controlplane.billing.providers import provider_for
    from controlplane.tasks.definitions import Services
    from controlplane.tasks.queue import TaskQueue
    from controlplane.usage.collector import Collector

    async def work(platform: Platform) -> None:
        settings = platform.settings
        if concurrency is not None:
            settings = settings.replace(tasks=dataclasses.replace(settings.tasks, concurrency=concurrency))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        collector = Collector(
            platform.fleet,
            settings.database,
            concurrency=settings.usage.concurrency,
            storage_root=settings.data_dir / "storage",
        )
        backups = BackupService(platform)
        billing = provider_for(settings.billing)
        queue = TaskQueue(settings)
        await queue.open()
        try:
            queue.start_worker(Services(platform, collector, backups, billing=billing))
            click.echo(f"worker started (concurrency {settings.tasks.concurrency})", err=True)
            await stop.wait()
        finally:
            await queue.close()
            await backups.stop()
            if billing is not None:
                await billing.aclose()

    with_platform(work)
