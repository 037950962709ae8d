"""Fleet migration benchmark: ``cardvault migrate tenants`` against raw psycopg, in one run, on one server.

    .venv/bin/python ops/bench/migrate.py [--tenants 1000] [--concurrency 4] [--rounds 2] [--dsn DSN]

Provisions N tenants through the service layer, adds a revision to a temporary copy of the tenant
schema (a column and an index on ``cards``), then measures, alternating the order every round:

- raw: per tenant database, at the same concurrency (asyncio + psycopg): connect, run the revision's
  statements, update the version row, commit, close;
- cardvault: the real command, ``cardvault migrate tenants --concurrency C`` in a subprocess, wall
  time from exec to exit (CLI start-up, registry, template upgrade, every tenant, ledger).

``--online`` adds, for reference, the path ``migrate tenants`` took before it rendered SQL: alembic
online per tenant in a spawn process pool of the same size (in this process, no ledger).

Between measurements every database (tenants and template) is put back at the previous head, untimed.
It prints each round, the medians, their ratio and per-tenant p50/p95; exit status 1 when the ratio
is above ``--floor`` (1.5). ``provision.py --migrate`` calls ``compare`` over the tenants it provisioned.

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under
``/var/tmp`` and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and roles this
run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import drop_leftovers, pct, run, server_env  # noqa: E402

from controlplane import db  # noqa: E402
from controlplane.migrations.service import upgrade_online  # noqa: E402
from controlplane.platform import Platform  # noqa: E402
from controlplane.provisioning.service import TenantService  # noqa: E402
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE, SchemaScripts  # noqa: E402
from controlplane.schemas.control import migrate_registry  # noqa: E402
from controlplane.settings import DatabaseSettings, ProvisioningSettings, SecuritySettings, Settings  # noqa: E402

BENCH_REVISION = "9001"
#: What the added revision does, and how the benchmark undoes it between measurements.
STATEMENTS = (
    "ALTER TABLE cards ADD COLUMN bench_grade integer",
    "CREATE INDEX cards_bench_grade ON cards (bench_grade)",
)
UNDO = ("DROP INDEX cards_bench_grade", "ALTER TABLE cards DROP COLUMN bench_grade")

EXTRA_REVISION = '''"""bench: a column and an index on cards

Revision ID: {new}
Revises: {head}
"""
from alembic import op

revision = "{new}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''

SECRET_KEY = "bench-" + "k" * 40


def write_revision(schema_dir: Path, head: str) -> None:
    """Add BENCH_REVISION (STATEMENTS / UNDO) on top of ``head`` in the schema copy ``schema_dir``."""

    def body(statements: Sequence[str]) -> str:
        return "\n".join(f"    op.execute({s!r})" for s in statements)

    text = EXTRA_REVISION.format(new=BENCH_REVISION, head=head, upgrade=body(STATEMENTS), downgrade=body(UNDO))
    (schema_dir / "versions" / f"{BENCH_REVISION}_bench.py").write_text(text)


async def over_fleet(
    dsns: Sequence[str], concurrency: int, one: Callable[[str], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run ``one(dsn)`` for every DSN, ``concurrency`` at a time: (wall seconds, seconds of each)."""
    queue = iter(dsns)
    times: list[float] = []

    async def worker() -> None:
        for dsn in queue:
            started = time.perf_counter()
            await one(dsn)
            times.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, times


def version_update(revision: str) -> sql.Composed:
    return sql.SQL("UPDATE {} SET version_num = {}").format(sql.Identifier(TENANT_VERSION_TABLE), sql.Literal(revision))


async def raw_upgrade(dsn: str) -> None:
    """The baseline: connect, the revision's SQL, the version row, commit, close."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for statement in STATEMENTS:
            await conn.execute(statement.encode())
        await conn.execute(version_update(BENCH_REVISION))


async def undo(dsns: Sequence[str], head: str) -> None:
    async def one(dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for statement in UNDO:
                await conn.execute(statement.encode())
            await conn.execute(version_update(head))

    await over_fleet(dsns, 8, one)


@dataclasses.dataclass
class Bench:
    """One fleet under measurement: its databases, and how to run the real command over them."""

    server_dsn: str
    control_dsn: str
    template: str
    schema_dir: Path
    data_dir: Path
    databases: list[str]
    concurrency: int

    def dsn(self, database: str) -> str:
        return db.with_database(self.server_dsn, database)

    def cli(self) -> tuple[float, dict[str, Any]]:
        env = server_env(
            {
                "CARDVAULT_DATABASE_URL": self.control_dsn,
                "CARDVAULT_SECRET_KEY": SECRET_KEY,
                "CARDVAULT_ADMIN_TOKEN": "bench",
                "CARDVAULT_TEMPLATE_DATABASE": self.template,
                "CARDVAULT_TENANT_SCHEMA_DIR": str(self.schema_dir),
                "CARDVAULT_DATA_DIR": str(self.data_dir),
                "CARDVAULT_LOG_LEVEL": "WARNING",
            }
        )
        command = [str(ROOT / ".venv" / "bin" / "cardvault"), "migrate", "tenants"]
        started = time.perf_counter()
        proc = subprocess.run(
            [*command, "--concurrency", str(self.concurrency), "--json"], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"cardvault migrate tenants failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return seconds, json.loads(proc.stdout)

    async def online(self) -> tuple[float, list[float]]:
        """The previous path: alembic online per tenant, ``concurrency`` spawned worker processes."""
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.concurrency, mp_context=context) as pool:
            # Start the workers (and their imports) before the clock, as a long-running CLI would have.
            await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.2) for _ in range(self.concurrency)))

            async def one(dsn: str) -> None:
                work = functools.partial(
                    upgrade_online, str(self.schema_dir), TENANT_VERSION_TABLE, dsn, BENCH_REVISION
                )
                await loop.run_in_executor(pool, work)

            return await over_fleet([self.dsn(d) for d in self.databases], self.concurrency, one)

    def ledger_seconds(self) -> list[float]:
        """Per-tenant seconds of the last ``migrate tenants`` run, from the operations ledger."""
        with psycopg.connect(self.control_dsn) as conn:
            rows = conn.execute(
                "SELECT (params->>'seconds')::float FROM tenant_operations WHERE kind = 'migrate'"
                " ORDER BY id DESC LIMIT %s",
                (len(self.databases),),
            ).fetchall()
        return [float(r[0]) for r in rows]

    async def reset(self, head: str) -> None:
        """Every tenant database and the template back at ``head`` (untimed)."""
        await undo([self.dsn(d) for d in self.databases], head)
        scripts = SchemaScripts(self.schema_dir, TENANT_VERSION_TABLE)
        await asyncio.to_thread(scripts.downgrade, self.dsn(self.template), head)
        with psycopg.connect(self.control_dsn, autocommit=True) as conn:
            conn.execute("UPDATE db_servers SET template_revision = %s", (head,))
            conn.execute("UPDATE tenants SET schema_revision = %s", (head,))


def line(label: str, values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"  {label:<40} n={len(ms):<5} p50={statistics.median(ms):8.2f} ms  p95={pct(ms, 0.95):8.2f} ms"


async def compare(bench: Bench, head: str, rounds: int, *, online: bool = False) -> float:
    """Alternate raw and ``cardvault migrate tenants`` ``rounds`` times; print them; the ratio of medians."""
    write_revision(bench.schema_dir, head)
    dsns = [bench.dsn(d) for d in bench.databases]
    raw_walls: list[float] = []
    cli_walls: list[float] = []
    online_walls: list[float] = []
    raw_each: list[float] = []
    cli_each: list[float] = []
    n, c = len(dsns), bench.concurrency
    print(f"migrate {n} tenants to a revision adding a column and an index, concurrency {c}, {rounds} rounds:")
    for number in range(rounds):
        order = ("raw", "cardvault") if number % 2 == 0 else ("cardvault", "raw")
        for which in (*order, "online") if online else order:
            if which == "online":
                wall, _ = await bench.online()
                online_walls.append(wall)
                print(f"  round {number + 1}: alembic per tenant   {wall:7.2f} s  ({n / wall:6.1f} tenants/s)")
            elif which == "raw":
                wall, times = await over_fleet(dsns, c, raw_upgrade)
                raw_walls.append(wall)
                raw_each.extend(times)
                print(f"  round {number + 1}: raw psycopg          {wall:7.2f} s  ({n / wall:6.1f} tenants/s)")
            else:
                wall, report = await asyncio.to_thread(bench.cli)
                if report["succeeded"] != n or report["head"] != BENCH_REVISION:
                    raise RuntimeError(f"unexpected report: {report}")
                cli_walls.append(wall)
                cli_each.extend(bench.ledger_seconds())
                print(f"  round {number + 1}: cardvault migrate    {wall:7.2f} s  ({n / wall:6.1f} tenants/s)")
            started = time.perf_counter()
            await bench.reset(head)
            print(f"  (reset to {head} in {time.perf_counter() - started:.1f} s, untimed)", file=sys.stderr)
    raw, cli = statistics.median(raw_walls), statistics.median(cli_walls)
    ratio = cli / raw
    print(f"  median wall: raw {raw:.2f} s, cardvault migrate tenants {cli:.2f} s: ratio {ratio:.2f}x")
    if online_walls:
        before = statistics.median(online_walls)
        print(f"  median wall: alembic online per tenant (previous path) {before:.2f} s: {before / raw:.2f}x raw")
    print(line("per tenant, raw psycopg", raw_each))
    print(line("per tenant, cardvault (ledger seconds)", cli_each))
    return ratio


async def provision(settings: Settings, count: int, run_id: str, concurrency: int = 4) -> list[str]:
    """``count`` tenants through the service layer, ``concurrency`` at a time; their database names."""
    async with Platform.open(settings, migrate=False) as platform:
        service = TenantService(platform)
        slugs = iter(f"mig-{run_id}-{i}" for i in range(count))
        names: list[str] = []

        async def worker() -> None:
            for slug in slugs:
                tenant = await service.create(name=slug, slug=slug, tier="starter")
                names.append(tenant.database_name)
                if len(names) % 200 == 0:
                    print(f"  ... {len(names)}/{count} provisioned", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return sorted(names)


async def main_bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    run_id = uuid.uuid4().hex[:8]
    control_db, template = f"cvbench_ctl_{run_id}", f"cvbench_tpl_{run_id}"
    admin = psycopg.connect(server_dsn, autocommit=True)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
    schema_dir = home / "tenant_schema"
    shutil.copytree(ROOT / "tenant_schema", schema_dir, ignore=shutil.ignore_patterns("__pycache__"))
    control_dsn = db.with_database(server_dsn, control_db)
    settings = Settings(
        database=DatabaseSettings(url=control_dsn),
        provisioning=dataclasses.replace(
            ProvisioningSettings(), template_database=template, reconcile_interval=0, tenant_schema_dir=schema_dir
        ),
        security=SecuritySettings(secret_key=SECRET_KEY, admin_token="bench"),
    )
    try:
        version = admin.execute("SHOW server_version").fetchone()
        fsync = admin.execute("SHOW fsync").fetchone()
        print(f"server: PostgreSQL {version[0] if version else '?'}, fsync={fsync[0] if fsync else '?'}")
        await migrate_registry(settings)
        started = time.perf_counter()
        databases = await provision(settings, args.tenants, run_id)
        print(f"provisioned {len(databases)} tenants in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        head = SchemaScripts(schema_dir, TENANT_VERSION_TABLE).head()
        bench = Bench(server_dsn, control_dsn, template, schema_dir, home / "data", databases, args.concurrency)
        ratio = await compare(bench, head, args.rounds, online=args.online)
        return 0 if ratio <= args.floor else 1
    finally:
        if args.dsn:  # a private cluster is destroyed whole
            drop_leftovers(admin, server_dsn, control_db, template)
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each path (order alternates)")
    parser.add_argument("--floor", type=float, default=1.5, help="exit 1 when cardvault/raw exceeds this ratio")
    parser.add_argument("--online", action="store_true", help="also time the previous path (alembic per tenant)")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    args = parser.parse_args()
    os.environ.pop("CARDVAULT_DATABASE_URL", None)
    run("cvbench-migrate-", args.dsn, lambda dsn, home: main_bench(args, dsn, home))


if __name__ == "__main__":
    main()
