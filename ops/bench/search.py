"""Card search benchmark: ``GET /t/{slug}/api/cards?q=...`` at 100,000 cards, without and with the index.

    .venv/bin/python ops/bench/search.py [--cards 100000] [--requests 200] [--dsn DSN]

Provisions one tenant with a tenant_admin through the service layer and loads ``--cards`` cards into its
database (``COPY``; card numbers like ``T206-004711``, notes of 4-12 words from a 3,000-word vocabulary,
so a word is in a few hundred cards at most while common words are in thousands), then ANALYZEs.
Requests go through the real application (``create_app``, in process over ASGI: routing, JWT
authentication, the per-tenant pool and the real search query), one at a time, ``--requests`` per search
term after a warm-up, and their p50/p99 are printed:

- before: the trigram indexes of tenant_schema revision 0004 dropped (what every tenant had until then);
- after: the indexes built again (their build time is printed too) and the table re-ANALYZEd.

Search terms: a card number (one match), a rare note word, a common note word, a two-word phrase, a
term matching nothing (a typo), each searched as users type it.

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under
``/var/tmp`` and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and roles this
run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import drop_leftovers, pct, run  # noqa: E402

from controlplane import db  # noqa: E402
from controlplane.settings import (  # noqa: E402
    AuthSettings,
    DatabaseSettings,
    ProvisioningSettings,
    SecuritySettings,
    Settings,
)

ADMIN_PASSWORD = "search-bench-password"
#: The indexes tenant_schema revision 0004 adds (dropped for "before", built again for "after").
INDEXES = {
    "cards_cardnumber_trgm_idx": "CREATE INDEX cards_cardnumber_trgm_idx ON cards USING gin (cardnumber gin_trgm_ops)"
    " WITH (gin_pending_list_limit = 256)",
    "cards_notes_trgm_idx": "CREATE INDEX cards_notes_trgm_idx ON cards USING gin (notes gin_trgm_ops)"
    " WITH (gin_pending_list_limit = 256)",
}
#: Cards added after the index was built, for the third phase (they wait in the indexes' pending lists).
LATE_CARDS = 2_000
SETS = ("T206", "1952T", "BOW", "FLR", "UD", "SP", "DON", "SCR", "PAN", "LEAF")
CONDITIONS = ("mint", "near_mint", "excellent", "very_good", "good", "fair", "poor")
ONSETS = (
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "ch",
    "sh",
    "th",
    "st",
    "tr",
    "br",
    "gr",
    "pl",
)
NUCLEI = ("a", "e", "i", "o", "u", "y", "ea", "ou", "ai", "ee")
CODAS = ("", "", "n", "r", "s", "t", "l", "ck", "nd", "ng")


def vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    """Pronounceable made-up words (2-3 syllables): about as varied in trigrams as English words."""
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(2, 3)
        words.add("".join(rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS) for _ in range(syllables)))
    ordered = sorted(words)
    rng.shuffle(ordered)  # the frequency rank of a word must not follow its spelling
    return ordered


def cards(count: int, seed: int = 7) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Rows (cardnumber, year, condition, notes) and the vocabulary; word frequency is Zipf-like."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    rows = []
    for n in range(count):
        notes = " ".join(rng.choices(words, weights, k=rng.randint(4, 12)))
        rows.append((f"{SETS[n % len(SETS)]}-{n:06d}", rng.randint(1950, 2024), rng.choice(CONDITIONS), notes))
    return rows, words


def terms(rows: Sequence[tuple[Any, ...]], words: Sequence[str]) -> dict[str, str]:
    """Search terms: label -> term."""
    phrase = " ".join(str(rows[len(rows) // 3][3]).split()[:2])
    return {
        "card number (1 match)": str(rows[len(rows) // 2][0]).lower(),
        "rare note word": words[-1],
        "common note word": words[0],
        "two-word phrase": phrase,
        "no match (typo)": "zqxv-nothing",
    }


def load(dsn: str, rows: Sequence[tuple[Any, ...]], *, analyze: bool = True) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor().copy("COPY cards (cardnumber, year, condition, notes) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if analyze:
            conn.execute("ANALYZE cards")


def line(values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {statistics.median(ms):6.2f} p99 {pct(ms, 0.99):6.2f} ms"


async def measure(client: Any, path: str, token: str, term: str, requests: int) -> tuple[list[float], int]:
    headers = {"Authorization": f"Bearer {token}"}
    matches = 0
    for _ in range(10):  # warm-up: pool, plans, caches
        response = await client.get(path, params={"q": term}, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}?q={term}: {response.status_code} {response.text}")
        matches = len(response.json()["items"])
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(path, params={"q": term}, headers=headers)
        times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}?q={term}: {response.status_code}")
    return times, matches


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    from litestar.testing import AsyncTestClient

    from controlplane.app import create_app
    from controlplane.auth.passwords import Passwords, normalize_email, validate_password
    from controlplane.platform import Platform
    from controlplane.provisioning.service import FirstAdmin, TenantService
    from controlplane.registry import repository as registry
    from controlplane.registry.models import QuotaType
    from controlplane.schemas.control import migrate_registry

    run_id = uuid.uuid4().hex[:8]
    control_db, template, slug = f"cvbench_ctl_{run_id}", f"cvbench_tpl_{run_id}", f"search-{run_id}"
    admin = psycopg.connect(server_dsn, autocommit=True)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
    settings = Settings(
        data_dir=home / "data",
        database=DatabaseSettings(url=db.with_database(server_dsn, control_db)),
        provisioning=dataclasses.replace(ProvisioningSettings(), template_database=template, reconcile_interval=0),
        security=SecuritySettings(secret_key="bench-" + "k" * 40, admin_token="bench-admin-token"),
        auth=AuthSettings(argon2_memory_kib=64, argon2_time_cost=1),
        log_level="WARNING",
    )
    logging.disable(logging.INFO)  # the app's request and scheduler logs
    try:
        version = admin.execute("SHOW server_version").fetchone()
        print(f"server: PostgreSQL {version[0] if version else '?'}; {args.cards} cards in one tenant")
        await migrate_registry(settings)
        email = normalize_email(f"admin@{slug}.bench")
        async with Platform.open(settings, migrate=False) as platform:
            password_hash = await Passwords(settings.auth).hash(validate_password(ADMIN_PASSWORD))
            tenant = await TenantService(platform).create(
                name="Search bench",
                slug=slug,
                tier="enterprise",
                admin=FirstAdmin(email=email, password_hash=password_hash),
            )
            async with platform.control.connection() as conn, conn.transaction():
                await registry.set_quotas(conn, tenant.id, {QuotaType.API_CALLS_PER_HOUR: 10_000_000})
        tenant_dsn = db.with_database(server_dsn, tenant.database_name)
        rows, words = cards(args.cards)
        started = time.perf_counter()
        load(tenant_dsn, rows)
        print(f"loaded {len(rows)} cards in {time.perf_counter() - started:.1f} s (COPY + ANALYZE)")
        searches = terms(rows, words)
        path = f"/t/{slug}/api/cards"
        results: dict[str, dict[str, tuple[list[float], int]]] = {}
        async with AsyncTestClient(app=create_app(settings)) as client:
            login = await client.post(f"/t/{slug}/auth/token", json={"email": email, "password": ADMIN_PASSWORD})
            if login.status_code != 200:
                raise RuntimeError(f"login failed: {login.status_code} {login.text}")
            token = login.json()["access_token"]
            with psycopg.connect(tenant_dsn, autocommit=True) as conn:
                for name in INDEXES:
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            for phase in ("before", "after", "pending"):
                if phase == "after":
                    with psycopg.connect(tenant_dsn, autocommit=True) as conn:
                        started = time.perf_counter()
                        for statement in INDEXES.values():
                            conn.execute(statement.encode())
                        built = time.perf_counter() - started
                        conn.execute("ANALYZE cards")
                    print(f"built the two trigram indexes in {built:.1f} s")
                elif phase == "pending":
                    late, _ = cards(LATE_CARDS, seed=8)
                    load(tenant_dsn, [(f"NEW-{n:06d}", *row[1:]) for n, row in enumerate(late)], analyze=False)
                    print(f"added {LATE_CARDS} cards (COPY) after the indexes were built: pending-list phase")
                results[phase] = {
                    label: await measure(client, path, token, term, args.requests) for label, term in searches.items()
                }
        print(f"GET {path}?q=... one request at a time, {args.requests} per term (a page is 50 cards):")
        header = f"  {'term':<22} {'rows':>4}  {'before: no index':<27} {'after: pg_trgm GIN':<27}"
        print(f"{header} {'p50 gain':>8}  {f'after +{LATE_CARDS} new cards':<27}")
        for label in searches:
            before, matches = results["before"][label]
            after, _ = results["after"][label]
            pending, _ = results["pending"][label]
            gain = statistics.median(before) / statistics.median(after)
            print(f"  {label:<22} {matches:>4}  {line(before):<27} {line(after):<27} {gain:7.1f}x  {line(pending):<27}")
        print("  terms: " + ", ".join(f"{label}={term!r}" for label, term in searches.items()))
        return 0
    finally:
        if args.dsn:  # a private cluster is destroyed whole
            drop_leftovers(admin, server_dsn, control_db, template)
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per term and phase")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    args = parser.parse_args()
    run("cvbench-search-", args.dsn, lambda dsn, home: bench(args, dsn, home))


if __name__ == "__main__":
    main()
