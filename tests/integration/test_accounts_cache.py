"""Cached principals and account changes: the cache is dropped after the change commits, not before.

The principal cache keeps a caller's user, role and session state for ``principal_cache_ttl`` seconds
(long here, so a stale entry would stay for the whole test). A change of accounts drops the tenant's
entries; dropped before the commit, a request in between reads the old, still committed, state and
caches it again. The tests force such a lookup into that window: the handler's service call is
wrapped so that, after the change is written and before the request's transaction commits, the
changed user's token is looked up exactly as a request of theirs would be (its own pooled connection,
through this instance's cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.accounts.models import User, UserUpdate
from controlplane.accounts.service import Accounts
from controlplane.app import create_app
from controlplane.auth.models import Principal, Role
from controlplane.auth.service import Authenticator
from controlplane.http.state import AUTH_STATE_KEY, TENANT_CACHE_STATE_KEY, TENANT_POOLS_STATE_KEY
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.routing.resolver import resolve
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.auth_support import add_user, bearer, create_tenant, login

Client = AsyncTestClient[Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, principal_cache_ttl=3600.0))


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield test_client


def in_the_window(monkeypatch: pytest.MonkeyPatch, client: Client, slug: str, token: str) -> list[Principal]:
    """After ``update_user`` wrote its change and before the request commits, look the holder of
    ``token`` up as any of their requests would (on a connection of its own, through the cache); the
    principals seen are collected in the returned list."""
    seen: list[Principal] = []
    original = Accounts.update_user
    state = client.app.state

    async def update_user(self: Accounts, user_id: int, data: UserUpdate) -> User:
        user = await original(self, user_id, data)
        auth: Authenticator = state[AUTH_STATE_KEY]
        pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
        tenant = await resolve(state[TENANT_CACHE_STATE_KEY], slug)
        credential = await auth.credential(f"Bearer {token}")
        async with pools.connection(tenant.id) as conn:
            seen.append(await auth.tenant_principal(conn, tenant, credential))
        return user

    monkeypatch.setattr(Accounts, "update_user", update_user)
    return seen


@pytest.mark.parametrize(
    ("change", "probe", "after"),
    [
        ({"disabled": True}, "/me", 401),  # a disabled user is out at once
        ({"role": "user"}, "/users", 403),  # a demoted admin loses users:read at once
    ],
)
async def test_a_lookup_during_the_change_does_not_keep_the_old_principal(
    client: Client,
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, object],
    probe: str,
    after: int,
) -> None:
    t = await create_tenant(client, "cache-window")
    await add_user(platform, t.slug, "target@x.test", "tenant_admin")
    token = (await login(client, t.slug, "target@x.test"))["access_token"]
    target = bearer(token)
    target_id = (await client.get(t.api("/me"), headers=target)).json()["id"]
    assert (await client.get(t.api(probe), headers=target)).status_code == 200

    seen = in_the_window(monkeypatch, client, t.slug, token)
    response = await client.patch(t.api(f"/users/{target_id}"), json=change, headers=t.auth)
    assert response.status_code == 200, response.text
    # In the window the change was not committed: the lookup saw (and cached) the old principal.
    assert [(p.user_id, p.role) for p in seen] == [(target_id, Role.TENANT_ADMIN)]
    # Committed: this instance no longer has it; the target's next request sees the change.
    assert (await client.get(t.api(probe), headers=target)).status_code == after
