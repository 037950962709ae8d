"""The CardVault tenant schema (tenant_schema/ revision 0001): tables, constraints, defaults.

The schema is migrated once into a module template database; each test gets its own clone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, errors, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from controlplane.cards import repository
from controlplane.schemas.alembic_runner import tenant_scripts
from controlplane.settings import ProvisioningSettings
from tests.integration.tenant_support import create_database, drop_database

TenantConn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def migrated_template(admin_dsn: str) -> Iterator[str]:
    """A database at tenant_schema head, cloned by every test (name returned)."""
    name = f"cvtest_tpl_{uuid.uuid4().hex[:12]}"
    dsn = create_database(admin_dsn, name)
    try:
        scripts = tenant_scripts(ProvisioningSettings())
        assert scripts.upgrade(dsn) == scripts.head()
        yield name
    finally:
        drop_database(admin_dsn, name)


@pytest.fixture
def db(admin_dsn: str, migrated_template: str) -> Iterator[TenantConn]:
    """An autocommit connection to a fresh tenant database cloned from the template."""
    name = f"cvtest_{uuid.uuid4().hex[:16]}"
    dsn = create_database(admin_dsn, name, template=migrated_template)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            yield conn
    finally:
        drop_database(admin_dsn, name)


def one(conn: TenantConn, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def add_user(conn: TenantConn, email: str, **columns: Any) -> int:
    names = ["email", "password_hash", *columns]
    values = [email, "argon2$hash", *columns.values()]
    query = sql.SQL("INSERT INTO users ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))
    )
    row = conn.execute(query, values).fetchone()
    assert row is not None
    return int(row[0])


def add_card(conn: TenantConn, **columns: Any) -> int:
    columns = {"cardnumber": "T-1", **columns}
    query = sql.SQL("INSERT INTO cards ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns))
    )
    row = conn.execute(query, list(columns.values())).fetchone()
    assert row is not None
    return int(row[0])


def test_no_tenant_id_columns_and_no_grants(db: TenantConn) -> None:
    """The database is the tenant boundary; privileges are granted by the control plane, not here."""
    assert one(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'tenant_id'") == 0
    assert (
        one(
            db,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relacl IS NOT NULL",
        )
        == 0
    )


def test_user_defaults(db: TenantConn) -> None:
    user_id = add_user(db, "ann@example.com")
    row = db.execute(
        "SELECT tenant_role, permissions, disabled, created_at IS NOT NULL, updated_at IS NOT NULL"
        " FROM users WHERE id = %s",
        (user_id,),
    ).fetchone()
    assert row == ("user", {}, False, True, True)


def test_duplicate_email_differing_in_case_is_rejected(db: TenantConn) -> None:
    add_user(db, "Ann@Example.com")
    with pytest.raises(errors.UniqueViolation) as failure:
        add_user(db, "ann@example.COM")
    assert failure.value.diag.constraint_name == "users_email_lower_key"
    add_user(db, "bob@example.com")


@pytest.mark.parametrize("role", ["tenant_admin", "collection_manager", "user"])
def test_known_tenant_roles_are_accepted(db: TenantConn, role: str) -> None:
    user_id = add_user(db, f"{role}@example.com", tenant_role=role)
    assert one(db, "SELECT tenant_role FROM users WHERE id = %s", (user_id,)) == role


def test_unknown_tenant_role_is_rejected(db: TenantConn) -> None:
    with pytest.raises(errors.CheckViolation) as failure:
        add_user(db, "eve@example.com", tenant_role="superuser")
    assert failure.value.diag.constraint_name == "users_tenant_role_check"


@pytest.mark.parametrize("value", [[], ["cards:write"], "admin", 1, None])
def test_permissions_must_be_an_object(db: TenantConn, value: Any) -> None:
    with pytest.raises(errors.CheckViolation) as failure:
        add_user(db, "perm@example.com", permissions=Jsonb(value))
    assert failure.value.diag.constraint_name == "users_permissions_check"


def test_permissions_object_is_accepted(db: TenantConn) -> None:
    user_id = add_user(db, "perm@example.com", permissions=Jsonb({"cards": ["read", "write"]}))
    assert one(db, "SELECT permissions FROM users WHERE id = %s", (user_id,)) == {"cards": ["read", "write"]}


@pytest.mark.parametrize("year", [1859, 2101, -1])
def test_year_out_of_range_is_rejected(db: TenantConn, year: int) -> None:
    with pytest.raises(errors.CheckViolation) as failure:
        add_card(db, year=year)
    assert failure.value.diag.constraint_name == "cards_year_check"


@pytest.mark.parametrize("year", [1860, 1989, 2100, None])
def test_year_in_range_is_accepted(db: TenantConn, year: int | None) -> None:
    card_id = add_card(db, year=year)
    assert one(db, "SELECT year FROM cards WHERE id = %s", (card_id,)) == year


def test_bad_condition_is_rejected(db: TenantConn) -> None:
    with pytest.raises(errors.CheckViolation) as failure:
        add_card(db, condition="Mint")  # values are lowercase identifiers
    assert failure.value.diag.constraint_name == "cards_condition_check"


@pytest.mark.parametrize("condition", ["mint", "near_mint", "excellent", "very_good", "good", "fair", "poor"])
def test_known_conditions_are_accepted(db: TenantConn, condition: str) -> None:
    card_id = add_card(db, condition=condition)
    assert one(db, "SELECT condition FROM cards WHERE id = %s", (card_id,)) == condition


@pytest.mark.parametrize("column", ["player_id", "team_id", "manufacturer_id", "created_by"])
def test_card_referencing_a_missing_row_is_rejected(db: TenantConn, column: str) -> None:
    with pytest.raises(errors.ForeignKeyViolation) as failure:
        add_card(db, **{column: 424242})
    assert failure.value.diag.constraint_name == f"cards_{column}_fkey"


def test_full_card_and_delete_rules(db: TenantConn) -> None:
    team_id = one(db, "INSERT INTO teams (name, city, league) VALUES ('Cubs', 'Chicago', 'NL') RETURNING id")
    maker_id = one(db, "INSERT INTO manufacturers (name) VALUES ('Topps') RETURNING id")
    player_id = one(
        db,
        "INSERT INTO players (first_name, last_name, team_id) VALUES ('Ernie', 'Banks', %s) RETURNING id",
        (team_id,),
    )
    user_id = add_user(db, "collector@example.com")
    card_id = add_card(
        db,
        player_id=player_id,
        team_id=team_id,
        manufacturer_id=maker_id,
        year=1954,
        condition="near_mint",
        image="cards/1.jpg",
        created_by=user_id,
    )

    # A player with cards cannot be deleted (RESTRICT) ...
    with pytest.raises(errors.ForeignKeyViolation):
        db.execute("DELETE FROM players WHERE id = %s", (player_id,))
    # ... nor can a team or manufacturer a card points at.
    with pytest.raises(errors.ForeignKeyViolation):
        db.execute("DELETE FROM manufacturers WHERE id = %s", (maker_id,))
    # Deleting the user who created the card keeps the card.
    db.execute("DELETE FROM users WHERE id = %s", (user_id,))
    assert one(db, "SELECT created_by FROM cards WHERE id = %s", (card_id,)) is None

    # Without cards, deleting a team leaves its players team-less.
    db.execute("DELETE FROM cards")
    db.execute("DELETE FROM teams WHERE id = %s", (team_id,))
    assert one(db, "SELECT team_id FROM players WHERE id = %s", (player_id,)) is None


def test_team_name_unique_per_league_even_without_league(db: TenantConn) -> None:
    db.execute("INSERT INTO teams (name, league) VALUES ('Giants', 'NL'), ('Giants', 'NFL'), ('Giants', NULL)")
    with pytest.raises(errors.UniqueViolation):
        db.execute("INSERT INTO teams (name, league) VALUES ('Giants', NULL)")
    with pytest.raises(errors.UniqueViolation):
        db.execute("INSERT INTO manufacturers (name) VALUES ('Upper Deck'), ('Upper Deck')")


def test_updated_at_follows_updates(db: TenantConn) -> None:
    card_id = add_card(db, created_at="2020-01-01T00:00:00Z", updated_at="2020-01-01T00:00:00Z")
    db.execute("UPDATE cards SET notes = 'signed' WHERE id = %s", (card_id,))
    assert one(db, "SELECT updated_at > created_at FROM cards WHERE id = %s", (card_id,)) is True


def test_files_constraints(db: TenantConn) -> None:
    card_id = add_card(db)
    digest = "ab" * 32
    insert = "INSERT INTO files (key, content_type, bytes, sha256, card_id) VALUES (%s, 'image/jpeg', %s, %s, %s)"
    db.execute(insert, ("cards/1.jpg", 1024, digest, card_id))
    assert one(db, "SELECT kind FROM files WHERE key = 'cards/1.jpg'") == "image"

    with pytest.raises(errors.UniqueViolation):
        db.execute(insert, ("cards/1.jpg", 1, digest, None))
    with pytest.raises(errors.CheckViolation):
        db.execute(insert, ("cards/2.jpg", -1, digest, None))
    for bad_digest in ("ab" * 31, "AB" * 32, "zz" * 32):
        with pytest.raises(errors.CheckViolation):
            db.execute(insert, ("cards/3.jpg", 1, bad_digest, None))
    with pytest.raises(errors.CheckViolation):
        db.execute(
            "INSERT INTO files (key, content_type, bytes, sha256, kind) VALUES ('x', 'a/b', 1, %s, 'video')",
            (digest,),
        )

    # Deleting the card keeps the stored file (for cleanup), unlinked.
    db.execute("DELETE FROM cards WHERE id = %s", (card_id,))
    assert one(db, "SELECT card_id FROM files WHERE key = 'cards/1.jpg'") is None


def test_audit_log_defaults_and_types(db: TenantConn) -> None:
    db.execute(
        "INSERT INTO audit_log (actor, action, entity, entity_id, source_address)"
        " VALUES ('user:1', 'card.create', 'card', '7', '192.0.2.10')"
    )
    row = db.execute("SELECT at IS NOT NULL, details, host(source_address) FROM audit_log").fetchone()
    assert row == (True, {}, "192.0.2.10")
    with pytest.raises(errors.InvalidTextRepresentation):
        db.execute("INSERT INTO audit_log (action, source_address) VALUES ('x', 'not-an-ip')")
    with pytest.raises(errors.NotNullViolation):
        db.execute("INSERT INTO audit_log (actor) VALUES ('user:1')")


# -- card search (revision 0004) --------------------------------------------------------------------


def search_plan(conn: TenantConn, term: str) -> str:
    """EXPLAIN of the tenant API's card search for ``term`` (first page, newest first)."""
    query, params = repository.page_query(
        repository.CARDS, sort="created_at", descending=True, after=None, limit=51, q=term
    )
    return "\n".join(str(row[0]) for row in conn.execute(sql.SQL("EXPLAIN ") + query, params))


def test_card_search_uses_the_trigram_indexes(db: TenantConn) -> None:
    assert one(db, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'") == 1
    db.execute(
        "INSERT INTO cards (cardnumber, notes) SELECT 'C-' || n, md5(n::text) FROM generate_series(1, 20000) AS n"
    )
    db.execute("UPDATE cards SET notes = 'Rookie card, corner wear' WHERE cardnumber = 'C-1500'")
    db.execute("ANALYZE cards")
    # 20,000 cards: enough for the sort index's full walk to cost more than the bitmaps; no sequential scan
    # either, which a table this small could still win (at 100,000 cards it does not: ops/bench/search.py).
    db.execute("SET enable_seqscan = off")

    plan = search_plan(db, "rookie")

    assert "Bitmap Index Scan on cards_notes_trgm_idx" in plan, plan
    assert "Bitmap Index Scan on cards_cardnumber_trgm_idx" in plan, plan
    row = db.execute(
        *repository.page_query(repository.CARDS, sort="created_at", descending=True, after=None, limit=51, q="ROOKIE")
    ).fetchall()
    assert [r[1] for r in row] == ["C-1500"]  # still a case-insensitive substring match

    # Without the indexes the same search reads every card.
    db.execute("DROP INDEX cards_notes_trgm_idx")
    assert "trgm" not in search_plan(db, "rookie")


def test_trigram_indexes_keep_a_short_pending_list(db: TenantConn) -> None:
    """Searches read a GIN index's pending list whole; 256 kB (not 4 MB) keeps that cheap after imports."""
    rows = db.execute(
        "SELECT c.relname, c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname LIKE 'cards_%_trgm_idx' ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("cards_cardnumber_trgm_idx", ["gin_pending_list_limit=256"]),
        ("cards_notes_trgm_idx", ["gin_pending_list_limit=256"]),
    ]


async def test_searches_are_planned_for_their_term(db: TenantConn, admin_dsn: str) -> None:
    """psycopg prepares a query run 5 times; a generic plan of a search could not use the trigram indexes."""
    dsn = conninfo.make_conninfo(admin_dsn, dbname=db.info.dbname)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(8):
            for term in ("rookie", None):
                await repository.select_page(
                    conn, repository.CARDS, sort="created_at", descending=True, after=None, limit=51, q=term
                )
        cur = await conn.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [str(row["statement"]) for row in await cur.fetchall()]
    assert any('FROM "cards"' in statement for statement in prepared)  # the plain list was prepared
    assert not any("ILIKE" in statement for statement in prepared), prepared
