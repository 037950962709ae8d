"""Drain targets and rebalance proposals (``controlplane.moves.balance``) over server fills
(``controlplane.usage.fill``): projected bytes (growth included) and connections weigh, proposals narrow the
gap and stop when the fleet is even, never target a draining or full server, and never leave a server past
its capacity; a drain spreads its tenants over the servers with room."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from controlplane.errors import ConfigError
from controlplane.fleet.models import Server, ServerStatus
from controlplane.moves.balance import Fleet, drain_targets, propose
from controlplane.registry.models import TenantStatus
from controlplane.settings import Settings
from controlplane.usage.fill import FillPolicy, ServerFill, TenantLoad, advice, fill_servers
from controlplane.usage.fill_repository import ServerView

GB = 10**9
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def server(name: str, status: ServerStatus = ServerStatus.ACTIVE) -> Server:
    return Server(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
        name=name,
        dsn_display="",
        status=status,
        template_revision=None,
        tenants=0,
        created_at=NOW,
    )


def tenant(slug: str, on: Server, gb: float, *, growth_gb: float = 0.0, connections: int = 0) -> TenantLoad:
    return TenantLoad(
        tenant_id=uuid.uuid5(uuid.NAMESPACE_DNS, slug),
        slug=slug,
        status=TenantStatus.ACTIVE,
        server_id=on.id,
        database_bytes=round(gb * GB),
        growth_bytes_per_day=growth_gb * GB,
        connections=connections,
    )


def fills(
    servers: list[Server], loads: list[TenantLoad], policy: FillPolicy, *, max_connections: int = 0
) -> list[ServerFill]:
    counted = [
        Server(
            **{**{f: getattr(s, f) for f in s.__struct_fields__}, "tenants": sum(t.server_id == s.id for t in loads)}
        )
        for s in servers
    ]
    views = {
        s.id: ServerView({}, {}, sum(t.connections for t in loads if t.server_id == s.id), max_connections)
        for s in servers
        if max_connections
    }
    return fill_servers(counted, loads, policy, views)


def moves(servers: list[Server], loads: list[TenantLoad], policy: FillPolicy, **kw: int) -> list[tuple[str, str, str]]:
    plan = Fleet(fills(servers, loads, policy, **kw), loads, policy)
    return [(p.slug, p.from_server, p.to_server) for p in propose(plan, limit=20)]


def test_a_skewed_fleet_is_evened_out_and_then_left_alone() -> None:
    a, b = server("a"), server("b")
    loads = [tenant(f"t{i}", a, 1.0) for i in range(4)]
    proposed = moves([a, b], loads, FillPolicy())
    assert [(frm, to) for _, frm, to in proposed] == [("a", "b"), ("a", "b")]
    # What they leave: two and two, nothing more to propose.
    moved = {slug for slug, _, _ in proposed}
    after = [tenant(t.slug, b if t.slug in moved else a, 1.0) for t in loads]
    assert moves([a, b], after, FillPolicy()) == []
    # Nearly even (within the tolerance): no move for a sliver.
    assert moves([a, b], [tenant("x", a, 1.05), tenant("y", b, 1.0)], FillPolicy()) == []


def test_growth_weighs_a_tenant_as_the_size_it_will_have() -> None:
    a, b = server("a"), server("b")
    flat = [tenant("small", a, 1.0), tenant("grower", a, 1.0), tenant("big", b, 5.0)]
    assert moves([a, b], flat, FillPolicy(horizon_days=14)) == []  # 2 GB against 5 GB: no move narrows it
    growing = [tenant("small", a, 1.0), tenant("grower", a, 1.0, growth_gb=0.5), tenant("big", b, 5.0)]
    # In 14 days: a holds 9 GB, b 5 GB; the small tenant moves (the grower would overshoot).
    assert moves([a, b], growing, FillPolicy(horizon_days=14)) == [("small", "a", "b")]


def test_connections_weigh_too() -> None:
    a, b = server("a"), server("b")

    def loads(hot: int) -> list[TenantLoad]:
        return [
            tenant("hot", a, 1.0, connections=hot),
            tenant("quiet", a, 1.0),
            tenant("c", b, 1.0),
            tenant("d", b, 1.0),
        ]

    assert moves([a, b], loads(40), FillPolicy(), max_connections=100) == [("quiet", "a", "b")]
    assert moves([a, b], loads(0), FillPolicy(), max_connections=100) == []
    # With max_connections 30, a is full (40 >= 27), and the hot tenant fits nowhere: the quiet one goes.
    assert fills([a, b], loads(40), FillPolicy(), max_connections=30)[0].full
    assert moves([a, b], loads(40), FillPolicy(), max_connections=30) == [("quiet", "a", "b")]


def test_proposals_never_target_draining_or_full_servers_nor_overfill_one() -> None:
    a, draining, full, room = server("a"), server("b", ServerStatus.DRAINING), server("c"), server("d")
    loads = [tenant(f"t{i}", a, 1.0) for i in range(4)] + [tenant("c1", full, 0.1), tenant("c2", full, 0.1)]
    proposed = moves([a, draining, full, room], loads, FillPolicy(max_tenants=2))
    assert proposed and {to for _, _, to in proposed} == {"d"}
    assert len(proposed) == 2  # d holds two then: CARDVAULT_SERVER_MAX_TENANTS

    # Capacity 10 GB at 0.9: b holds 8.5 GB; a 1 GB tenant would take it past 9 GB: no proposal.
    a, b = server("a"), server("b")
    policy = FillPolicy(capacity_bytes=10 * GB)

    def loads(on_b: float) -> list[TenantLoad]:
        return [tenant("x", a, 9.5), tenant("y", a, 1.0), tenant("z", b, on_b)]

    assert [s.full for s in fills([a, b], loads(8.5), policy)] == [True, False]
    assert moves([a, b], loads(8.5), policy) == []
    assert moves([a, b], loads(7.5), policy) == [("y", "a", "b")]  # 8.5 GB then: within 9


def test_a_drain_spreads_over_the_servers_with_room() -> None:
    a, b, c, d = server("a", ServerStatus.DRAINING), server("b"), server("c"), server("d", ServerStatus.DRAINING)
    loads = [tenant(f"t{i}", a, 1.0 + i / 10) for i in range(6)] + [tenant("b1", b, 1.0)]
    parked = TenantLoad(**{**{f: getattr(loads[0], f) for f in loads[0].__struct_fields__}, "slug": "parked"})
    parked.tenant_id, parked.status = uuid.uuid4(), TenantStatus.PROVISIONING
    plan = Fleet(
        fills([a, b, c, d], [*loads, parked], FillPolicy(max_tenants=3)), [*loads, parked], FillPolicy(max_tenants=3)
    )
    targets = {t.slug: to for t, to in drain_targets(plan, a.id)}
    assert targets["parked"] is None  # not movable
    assert sorted(to for to in targets.values() if to) == ["b", "b", "c", "c", "c"]
    assert targets["t0"] is None  # b and c hold 3 each then, d drains: the lightest stays


def test_the_recommendation_names_rebalance_drain_or_a_new_server() -> None:
    assert "rebalance" in advice("a", "projected full", ["b"]) and "cardvault servers drain a" in advice(
        "a", "x", ["b"]
    )
    assert "add a server" in advice("a", "projected full", [])
    a, b = server("a"), server("b")
    policy = FillPolicy(capacity_bytes=10 * GB, horizon_days=14)
    servers = fills([a, b], [tenant("g", a, 4.0, growth_gb=1.0), tenant("s", b, 1.0)], policy)
    assert servers[0].days_until_full == 6.0 and servers[0].projected_to_fill
    assert servers[0].recommendation is not None and "rebalance" in servers[0].recommendation
    assert servers[1].recommendation is None


def test_the_fill_policy_comes_from_the_server_settings() -> None:
    env = {
        "CARDVAULT_SERVER_MAX_TENANTS": "200",
        "CARDVAULT_SERVER_CAPACITY_BYTES": str(500 * GB),
        "CARDVAULT_SERVER_FULL_RATIO": "0.8",
        "CARDVAULT_SERVER_FILL_HORIZON_DAYS": "30",
    }
    assert FillPolicy.of(Settings.from_env(env).moves) == FillPolicy(
        max_tenants=200, capacity_bytes=500 * GB, full_ratio=0.8, horizon_days=30
    )
    assert FillPolicy.of(Settings.from_env({}).moves) == FillPolicy()  # no limits: nothing is ever full
    for bad in ("0", "1.5", "many"):
        with pytest.raises(ConfigError, match="CARDVAULT_SERVER_FULL_RATIO"):
            Settings.from_env({"CARDVAULT_SERVER_FULL_RATIO": bad})
    with pytest.raises(ConfigError, match="CARDVAULT_SERVER_FILL_HORIZON_DAYS must be >= 1"):
        Settings.from_env({"CARDVAULT_SERVER_FILL_HORIZON_DAYS": "0"})
