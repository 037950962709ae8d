"""Signup benchmark: the database step through the spare pool, through cloning and raw, then whole signups.

    .venv/bin/python ops/bench/signup.py [--rounds 200] [--signups 200] [--dsn DSN]

(1) The database step, ``--rounds`` times each, alternating in every round: a raw ``CREATE DATABASE ...
    TEMPLATE`` of the tenant template (the baseline), a ``TenantService.create`` that clones
    (``CARDVAULT_SPARE_DATABASES=0``: steps ``create_database`` + ``create_role``) and one that claims a
    ready spare (step ``claim_spare``: the rename of database and role and the access check). Step times
    come from the provisioning ledger (``Steps`` times each step with ``perf_counter``); the whole create
    is timed too. The pool is filled first (``SparePool.refill``, timed: the background cost per spare).
    Floor: the spare database step p50 < 10 ms.
(2) Whole signups, ``--signups`` each with spares (the default pool of 2, refilled in the background after
    each claim as in production) and without, alternating (one app per mode on the same control database,
    each going first every other round): ``POST /signup`` (JSON name, slug, email, password, tier) to
    201, then the new admin's first authenticated API call (``GET /t/{slug}/api/cards`` with the returned
    access token) to 200. In-process (the app through its ASGI interface, lifespan and scheduler running,
    production argon2 costs), so the breakdown is measured on the app's own objects: password hashing
    (``Passwords.hash``), registry (``TenantService.create`` minus its provisioning steps: lock, placement,
    registry and ledger rows, the claim), database (the ledger's database step), seeding the admin, the
    first connection to the tenant database (the app's first ``TenantPools.connection``) and the rest
    (login session, onboarding row and outbox, audit). Before each signup the pool is back to its target
    (untimed: signups come further apart than a clone in practice).
(3) Webhook processing: ``--webhook-events`` (10,000) over ``--webhook-tenants`` (1,000) subscribed tenants,
    against the local Stripe stand-in the tests use; see ``signup_webhooks.py``. Events per second.

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under a
temporary directory and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and roles
this run creates are touched, and all of them are dropped at the end (tenants, spares, raw clones, the
template, the control database). Exits 1 if the floor is violated.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import drop_leftovers, pct, run  # noqa: E402

from controlplane import db  # noqa: E402
from controlplane.platform import Platform  # noqa: E402
from controlplane.provisioning.catalog import TENANT_GROUP_ROLE  # noqa: E402
from controlplane.provisioning.service import TenantService  # noqa: E402
from controlplane.schemas.control import migrate_registry  # noqa: E402
from controlplane.settings import (  # noqa: E402
    DatabaseSettings,
    MailSettings,
    ProvisioningSettings,
    SecuritySettings,
    Settings,
    SignupSettings,
    UsageSettings,
)

SECRET_KEY = "bench-secret-key-0123456789abcdef-0123456789"
PASSWORD = "correct horse battery staple"
#: The floor of issue 12: the spare pool's database step, p50.
SPARE_STEP_FLOOR_MS = 10.0
DB_STEPS = {"clone": ("create_database", "create_role"), "spare": ("claim_spare",)}

Samples = dict[str, list[float]]


def line(label: str, ms: list[float], baseline: list[float] | None = None, what: str = "raw") -> str:
    text = f"  {label:<44} n={len(ms):<4} p50={statistics.median(ms):8.2f} ms  p95={pct(ms, 0.95):8.2f} ms"
    if baseline:
        text += f"  {statistics.median(ms) / statistics.median(baseline):6.2f}x {what}"
    return text


def make_settings(
    server_dsn: str, control_db: str, template: str, data_dir: Path, spares: int, strategy: str
) -> Settings:
    return Settings(
        data_dir=data_dir,
        log_level="WARNING",
        database=DatabaseSettings(url=db.with_database(server_dsn, control_db)),
        provisioning=dataclasses.replace(
            ProvisioningSettings(),
            template_database=template,
            reconcile_interval=0,
            spare_databases=spares,
            clone_strategy=strategy,
        ),
        security=SecuritySettings(secret_key=SECRET_KEY, admin_token="bench"),
        # Only this run's work: no collections, health rounds or mail delivery in the background.
        usage=dataclasses.replace(UsageSettings(), interval=0, health_interval=0, compact_interval=0),
        mail=dataclasses.replace(MailSettings(), interval=0),
        signup=dataclasses.replace(SignupSettings(), per_address_per_hour=1_000_000),
    )


async def ledger_steps(control_dsn: str, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, float]]:
    """Each tenant's provisioning step times (ms) from the ledger."""
    async with await psycopg.AsyncConnection.connect(control_dsn) as conn:
        cur = await conn.execute(
            "SELECT tenant_id, steps FROM tenant_operations WHERE kind = 'provision' AND tenant_id = ANY(%s)",
            (tenant_ids,),
        )
        rows = await cur.fetchall()
    return {tid: {s["step"]: float(s["ms"]) for s in steps} for tid, steps in rows}


# -- (1) the database step --------------------------------------------------------------------------


async def database_steps(args: argparse.Namespace, make: Callable[[int], Settings], admin: Any, run_id: str) -> bool:
    clone_settings, spare_settings = make(0), make(args.rounds)
    raw: list[float] = []
    creates: Samples = {"clone": [], "spare": []}
    ids: dict[str, list[uuid.UUID]] = {"clone": [], "spare": []}
    async with (
        Platform.open(clone_settings, migrate=False) as clone_platform,
        Platform.open(spare_settings, migrate=False) as spare_platform,
    ):
        cloner, claimer = TenantService(clone_platform), TenantService(spare_platform)
        # The template exists (and the management pools are warm) before anything is timed.
        warm = await cloner.create(name="warm-up", slug=f"warmup-{run_id}", tier="starter")
        await cloner.purge(warm.slug)
        started = time.perf_counter()
        (refill,) = await claimer.spares.refill()
        refill_seconds = time.perf_counter() - started
        print(
            f"spare pool filled: {refill.created} spares in {refill_seconds:.1f} s "
            f"({refill_seconds / max(refill.created, 1) * 1000:.1f} ms per spare, in the background in production)"
        )
        for i in range(args.rounds):
            name = f"cvbench_raw_{run_id}_{i}"
            t0 = time.perf_counter()
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
                    sql.Identifier(name),
                    sql.Identifier(clone_settings.provisioning.template_database),
                    sql.SQL(clone_settings.provisioning.clone_strategy.upper()),
                )
            )
            raw.append((time.perf_counter() - t0) * 1000)
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            for mode, service in (("clone", cloner), ("spare", claimer)):
                t0 = time.perf_counter()
                tenant = await service.create(name=f"{mode} {i}", slug=f"{mode}-{run_id}-{i}", tier="starter")
                creates[mode].append((time.perf_counter() - t0) * 1000)
                ids[mode].append(tenant.id)
            if (i + 1) % 50 == 0:
                print(f"  ... {i + 1}/{args.rounds} rounds", file=sys.stderr)
    control_dsn = clone_settings.database.url
    steps: Samples = {}
    for mode, tenant_ids in ids.items():
        by_tenant = await ledger_steps(control_dsn, tenant_ids)
        steps[mode] = [sum(by_tenant[t].get(s, 0.0) for s in DB_STEPS[mode]) for t in tenant_ids]
        if mode == "spare":
            claimed = sum("claim_spare" in by_tenant[t] for t in tenant_ids)
            print(f"  ({claimed}/{len(tenant_ids)} creates claimed a spare)")
    print(f"(1) database step, {args.rounds} rounds (raw, clone, spare in each; strategy {args.strategy}):")
    print(line("raw CREATE DATABASE ... TEMPLATE", raw))
    print(line("clone: create_database + create_role", steps["clone"], raw))
    print(line("spare: claim_spare (rename + access check)", steps["spare"], raw))
    print(f"  spare / clone p50 = {statistics.median(steps['spare']) / statistics.median(steps['clone']):.3f}x")
    print("  whole TenantService.create (registry, ledger, steps, activate):")
    print(line("  cloning", creates["clone"], raw))
    print(line("  claiming a spare", creates["spare"], raw))
    p50 = statistics.median(steps["spare"])
    ok = p50 < SPARE_STEP_FLOOR_MS
    print(f"  floor: spare database step p50 {p50:.2f} ms < {SPARE_STEP_FLOOR_MS:.0f} ms: {'PASS' if ok else 'FAIL'}")
    return ok


# -- (2) whole signups ------------------------------------------------------------------------------


class Timers:
    """Wraps the app's own objects to time each signup's parts (sequential signups: one entry each)."""

    def __init__(self, state: Any) -> None:
        from controlplane.http.state import AUTH_STATE_KEY, TENANT_POOLS_STATE_KEY, TENANTS_STATE_KEY

        self.hashing: list[float] = []
        self.create: list[float] = []
        self.provisioning: list[float] = []
        self.first_connection: dict[uuid.UUID, float] = {}
        self.tenants: TenantService = state[TENANTS_STATE_KEY]
        passwords = state[AUTH_STATE_KEY].passwords
        pools = state[TENANT_POOLS_STATE_KEY]
        passwords.hash = self._timed(passwords.hash, self.hashing)
        self.tenants.create = self._timed(self.tenants.create, self.create)
        self.tenants.on_provisioned(lambda seconds, ok: self.provisioning.append(seconds * 1000))
        original, seen = pools.connection, self.first_connection

        def connection(tenant_id: uuid.UUID, **kwargs: Any) -> Any:
            lease = original(tenant_id, **kwargs)
            if tenant_id in seen:
                return lease

            class First:
                async def __aenter__(self) -> Any:
                    t0 = time.perf_counter()
                    conn = await lease.__aenter__()
                    seen[tenant_id] = (time.perf_counter() - t0) * 1000
                    return conn

                async def __aexit__(self, *exc: Any) -> Any:
                    return await lease.__aexit__(*exc)

            return First()

        pools.connection = connection

    @staticmethod
    def _timed(fn: Callable[..., Awaitable[Any]], into: list[float]) -> Callable[..., Awaitable[Any]]:
        async def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                into.append((time.perf_counter() - t0) * 1000)

        return timed


class SignupRun:
    """One app (one mode: with spares or without) and what its signups measured."""

    def __init__(self, label: str, settings: Settings, client: Any, own: Platform) -> None:
        self.label, self.settings, self.client = label, settings, client
        self.timers = Timers(client.app.state)
        self.pool = TenantService(own).spares  # filled from this event loop (the app runs in the client's)
        self.out: dict[str, list[float]] = {k: [] for k in ("post", "first_call", "total")}
        self.ids: list[uuid.UUID] = []

    async def signup(self, slug: str, *, counted: bool) -> None:
        if self.pool.target:
            await fill(self.pool)  # untimed: the pool is back to its target, as between real signups
        body = {"name": slug, "slug": slug, "email": f"admin@{slug}.test", "password": PASSWORD, "tier": "starter"}
        t0 = time.perf_counter()
        created = await self.client.post("/signup", json=body)
        t1 = time.perf_counter()
        if created.status_code != 201:
            raise RuntimeError(f"POST /signup answered {created.status_code}: {created.text}")
        auth = {"Authorization": f"Bearer {created.json()['tokens']['access_token']}"}
        answered = await self.client.get(f"/t/{slug}/api/cards", headers=auth)
        t2 = time.perf_counter()
        if answered.status_code != 200:
            raise RuntimeError(f"first API call answered {answered.status_code}: {answered.text}")
        if not counted:  # the app's warm-up (pools, caches)
            for warm_up in (self.timers.hashing, self.timers.create, self.timers.provisioning):
                warm_up.clear()
            return
        self.ids.append(uuid.UUID(created.json()["tenant"]["id"]))
        self.out["post"].append((t1 - t0) * 1000)
        self.out["first_call"].append((t2 - t1) * 1000)
        self.out["total"].append((t2 - t0) * 1000)

    async def result(self) -> dict[str, list[float]]:
        out, timers, ids = self.out, self.timers, self.ids
        steps = await ledger_steps(self.settings.database.url, ids)
        mode = "spare" if self.settings.provisioning.spare_databases else "clone"
        out["hashing"] = timers.hashing
        out["registry"] = [c - p for c, p in zip(timers.create, timers.provisioning, strict=True)]
        out["database"] = [sum(steps[t].get(s, 0.0) for s in DB_STEPS[mode]) for t in ids]
        out["seed_admin"] = [steps[t].get("seed_admin", 0.0) for t in ids]
        out["first_connection"] = [timers.first_connection.get(t, 0.0) for t in ids]
        out["rest"] = [
            p - h - c - f
            for p, h, c, f in zip(out["post"], out["hashing"], timers.create, out["first_connection"], strict=True)
        ]
        out["claimed"] = [float("claim_spare" in steps[t]) for t in ids]
        return out


async def signups(make: Callable[[int], Settings], n: int, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``n`` signups with spares and ``n`` without, alternating (one app each, on the same control database)."""
    from litestar.testing import AsyncTestClient

    from controlplane.app import create_app

    spared, cloned = make(ProvisioningSettings.spare_databases), make(0)
    async with (
        Platform.open(spared, migrate=False) as own,
        AsyncTestClient(app=create_app(spared), timeout=60) as spare_client,
        AsyncTestClient(app=create_app(cloned), timeout=60) as clone_client,
    ):
        runs = [SignupRun("spare", spared, spare_client, own), SignupRun("clone", cloned, clone_client, own)]
        for i in range(n + 1):
            for run_ in runs if i % 2 else reversed(runs):  # each goes first every other round
                await run_.signup(f"su-{run_.label}-{run_id}-{i}", counted=i > 0)
            if i and i % 50 == 0:
                print(f"  ... {i}/{n} signups each", file=sys.stderr)
        return await runs[0].result(), await runs[1].result()


async def fill(pool: Any) -> None:
    """Until every server has its spares (a background refill after the last claim may hold the lock)."""
    for _ in range(500):
        outcomes = await pool.refill()
        if all(o.ready >= o.target for o in outcomes):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the spare pool did not fill: {[o.describe() for o in outcomes]}")


def print_signups(label: str, result: dict[str, list[float]], baseline: dict[str, list[float]] | None) -> None:
    claimed = int(sum(result["claimed"]))
    print(f"  {label} ({claimed}/{len(result['claimed'])} claimed a spare):")
    base = baseline["total"] if baseline else None
    print(line("signup until the first API call succeeds", result["total"], base, "without spares"))
    for key, what in (
        ("post", "POST /signup (to 201)"),
        ("hashing", "  password hashing (argon2id)"),
        ("registry", "  registry (lock, placement, rows, claim)"),
        ("database", "  database (clone + role, or claim)"),
        ("seed_admin", "  seeding the first admin"),
        ("first_connection", "  first connection to the tenant database"),
        ("rest", "  rest (session, onboarding, outbox, audit)"),
        ("first_call", "first authenticated API call"),
    ):
        print(line(what, result[key]))


# -- the run ----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    run_id = uuid.uuid4().hex[:8]
    control_db, template = f"cvbench_ctl_{run_id}", f"cvbench_tpl_{run_id}"
    admin = psycopg.connect(server_dsn, autocommit=True)
    group_existed = bool(admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TENANT_GROUP_ROLE,)).fetchone())
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))

    def make(spares: int) -> Settings:
        return make_settings(server_dsn, control_db, template, home / "data", spares, args.strategy)

    ok = True
    try:
        facts = admin.execute("SELECT current_setting('server_version'), current_setting('fsync')").fetchone()
        version, fsync = facts if facts else ("?", "?")
        print(f"machine: {os.cpu_count()} CPUs; server: PostgreSQL {version}, fsync={fsync}")
        await migrate_registry(make(0))
        if args.rounds:
            ok = await database_steps(args, make, admin, run_id)
        if args.signups:
            print(f"(2) whole signups, {args.signups} each, alternating (in-process apps, production argon2 costs):")
            with_spares, without = await signups(make, args.signups, run_id)
            print_signups("with spares (CARDVAULT_SPARE_DATABASES=2)", with_spares, without)
            print_signups("without spares (CARDVAULT_SPARE_DATABASES=0)", without, None)
        if args.webhook_events:
            from signup_webhooks import webhooks

            await webhooks(make(0), run_id, args.webhook_events, args.webhook_tenants)
    finally:
        started = time.perf_counter()
        await drop_spares(make(0))
        drop_leftovers(admin, server_dsn, control_db, template, drop_group_role=not group_existed)
        admin.close()
        print(f"dropped everything this run made in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0 if ok else 1


async def drop_spares(settings: Settings) -> None:
    """Every spare of this run (``SparePool.drop_all``) before the tenants, template and registry go."""
    try:
        async with Platform.open(settings, migrate=False) as platform:
            await TenantService(platform).spares.drop_all()
    except Exception as exc:  # the registry is gone already (an early failure): nothing was made
        print(f"spares not dropped: {exc}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="database-step rounds (each: raw, clone, spare)")
    parser.add_argument("--signups", type=int, default=200, help="whole signups with spares and without (each)")
    parser.add_argument("--webhook-events", type=int, default=10_000, help="webhook events to process (0: skip)")
    parser.add_argument("--webhook-tenants", type=int, default=1_000, help="subscribed tenants they are about")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    parser.add_argument("--strategy", choices=("wal_log", "file_copy"), default=ProvisioningSettings.clone_strategy)
    args = parser.parse_args()
    run("cvbench-signup-", args.dsn, lambda dsn, home: bench(args, dsn, home))


if __name__ == "__main__":
    main()
