"""Route x identity: every tenant API route, generated from the app's route table, called by every kind
of identity, answers what the permission matrix (``controlplane.auth.models.ROLE_PERMISSIONS``) says.

Identities: no token, another tenant's admin, each tenant role, API keys (user and tenant_admin roles),
a super-admin's platform token, and a super-admin impersonating a tenant_admin. Expected:

- no token -> 401; a garbage token -> 401;
- another tenant's token, a platform token -> 403 ``wrong_tenant``;
- an identity whose role lacks the route's permission -> 403 ``permission_denied``;
- otherwise the route runs (whatever it then answers: 200, 201, 204, 404 for the absent ids used
  here, 409 ...) and never 5xx.

Requests carry valid bodies (``BODIES``) so that the permission decides, not the validation; object
ids are ones that do not exist, so nothing is destroyed between calls. Both mounts are covered:
``/t/{slug}/api`` and ``/api`` with ``X-Tenant``.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from controlplane.auth.models import ROLE_PERMISSIONS, Permission, Role
from controlplane.http.tenant_request import PERMISSION_OPT
from controlplane.platform import Platform
from tests.integration.auth_support import add_user, bearer, create_tenant, login_as, make_admin, platform_login

Client = AsyncTestClient[Any]
PATH_PREFIX = "/t/{tenant_slug:str}/api"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
    b"\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND"
    b"\xaeB`\x82"
)
#: A valid body for every route that takes one, by (method, path under the mount).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/cards"): {"json": {"cardnumber": "M-1"}},
    ("PATCH", "/cards/{card_id:int}"): {"json": {"notes": "n"}},
    ("PUT", "/cards/{card_id:int}/image"): {"content": PNG, "headers": {"content-type": "image/png"}},
    ("POST", "/players"): {"json": {"last_name": "Ruth"}},
    ("PATCH", "/players/{player_id:int}"): {"json": {"position": "P"}},
    ("POST", "/teams"): {"json": {"name": "Yankees"}},
    ("PATCH", "/teams/{team_id:int}"): {"json": {"city": "NY"}},
    ("POST", "/manufacturers"): {"json": {"name": "Topps"}},
    ("PATCH", "/manufacturers/{manufacturer_id:int}"): {"json": {"name": "Upper Deck"}},
    ("POST", "/users"): {"json": {"email": "new@acme.test", "role": "user", "password": "long enough password"}},
    ("PATCH", "/users/{user_id:int}"): {"json": {"display_name": "X"}},
    ("POST", "/users/{user_id:int}/invitation"): {},
    ("POST", "/api-keys"): {"json": {"name": "k", "role": "user"}},
    ("PATCH", "/settings"): {"json": {"collection_name": "Mine"}},
    ("PATCH", "/me"): {"json": {"display_name": "Me"}},
    ("PUT", "/me/password"): {"json": {"current_password": "not my password", "new_password": "another password"}},
    ("POST", "/billing/checkout"): {"json": {"tier": "professional"}},
    ("POST", "/billing/portal"): {},
    ("POST", "/billing/plan"): {"json": {"tier": "enterprise"}},
    ("POST", "/exports"): {},
    ("POST", "/me/export"): {},
    ("POST", "/users/{user_id:int}/export"): {},
    ("POST", "/users/{user_id:int}/erase"): {"json": {"confirm_email": "nobody@acme.test"}},
    ("POST", "/backups"): {},
    ("PUT", "/sso"): {
        "json": {"issuer": "http://127.0.0.1:9", "client_id": "c", "client_secret": "s", "allowed_domains": ["a.test"]}
    },
}
#: What refusing an identity looks like (a route that runs may still answer 403 for its own reasons,
#: e.g. ``wrong_password`` when changing one's password).
DENIALS = {(403, "permission_denied"), (403, "wrong_tenant"), (403, "feature_not_in_tier")}
#: Routes about one's own user row: identities without one (API keys, impersonation) are refused there.
USER_ROW_ONLY = {
    ("PATCH", "/me"),
    ("PUT", "/me/password"),
    ("GET", "/me/sessions"),
    ("DELETE", "/me/sessions/{x}"),
    ("POST", "/me/export"),
}


def _fill(path: str) -> str:
    """Path parameters filled with ids that exist nowhere (so nothing is ever changed or removed)."""
    out = []
    for part in path.split("/"):
        if part.startswith("{") and ":uuid}" in part:
            out.append(str(uuid.uuid4()))
        elif part.startswith("{") and ":int}" in part:
            out.append("987654")
        else:
            out.append(part)
    return "/".join(out)


def tenant_routes(client: Client) -> list[tuple[str, str, Permission]]:
    """(method, path under the mount, permission) of every tenant API operation."""
    found = []
    for route in client.app.routes:
        if not isinstance(route, HTTPRoute) or not route.path_format.startswith("/t/{tenant_slug}/api"):
            continue
        for method, handler in route.route_handler_map.items():
            if method in ("OPTIONS", "HEAD"):
                continue
            permission = handler[0].opt.get(PERMISSION_OPT)
            assert isinstance(permission, Permission), f"{method} {route.path} declares no permission"
            found.append((method, route.path.removeprefix(PATH_PREFIX).rstrip("/") or "/", permission))
    return sorted(found)


def _key(method: str, path: str) -> tuple[str, str]:
    if path.startswith("/me/sessions/"):
        return method, "/me/sessions/{x}"
    return method, path


async def test_every_tenant_route_answers_every_identity_as_the_matrix_says(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme", tier="enterprise")
    other = await create_tenant(client, "other", tier="enterprise")
    await add_user(platform, "acme", "manager@acme.test", "collection_manager")
    await add_user(platform, "acme", "user@acme.test", "user")
    keys = {}
    for role in ("user", "tenant_admin"):
        made = await client.post(acme.api("/api-keys"), json={"name": role, "role": role}, headers=acme.auth)
        assert made.status_code == 201, made.text
        keys[role] = made.json()["key"]
    await make_admin(platform)
    platform_token = (await platform_login(client))["access_token"]
    impersonation = await client.post(
        "/admin/tenants/acme/impersonate",
        json={"reason": "matrix test"},
        headers=bearer(platform_token),
    )
    assert impersonation.status_code == 200, impersonation.text
    client.headers.pop("Authorization")

    # identity -> (headers, role it acts with or the error every route must give, has a user row)
    identities: dict[str, tuple[dict[str, str], Role | tuple[int, str], bool]] = {
        "none": ({}, (401, "unauthorized"), False),
        "garbage": (bearer("not-a-token"), (401, "invalid_token"), False),
        "other tenant's admin": (other.auth, (403, "wrong_tenant"), False),
        "super_admin platform token": (bearer(platform_token), (403, "wrong_tenant"), False),
        "tenant_admin": (acme.auth, Role.TENANT_ADMIN, True),
        "collection_manager": (await login_as(client, "acme", "manager@acme.test"), Role.COLLECTION_MANAGER, True),
        "user": (await login_as(client, "acme", "user@acme.test"), Role.USER, True),
        "api key (user)": (bearer(keys["user"]), Role.USER, False),
        "api key (tenant_admin)": (bearer(keys["tenant_admin"]), Role.TENANT_ADMIN, False),
        "impersonation": (bearer(impersonation.json()["access_token"]), Role.TENANT_ADMIN, False),
    }
    routes = tenant_routes(client)
    assert len(routes) >= 35, routes
    mismatches = []
    calls = 0
    for method, path, permission in routes:
        body = BODIES.get((method, path))
        assert body is not None or method in ("GET", "DELETE"), f"add a valid body for {method} {path} to BODIES"
        for name, (auth, expect, has_user_row) in identities.items():
            for mount, mount_headers in ((f"/t/acme/api{path}", {}), (f"/api{path}", {"X-Tenant": "acme"})):
                kwargs = dict(body or {})
                headers = {**mount_headers, **auth, **kwargs.pop("headers", {})}
                response = await client.request(method, _fill(mount), headers=headers, **kwargs)
                calls += 1
                payload = (
                    response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                )
                got = (response.status_code, payload.get("error") if isinstance(payload, dict) else None)
                if isinstance(expect, tuple):
                    ok = got == expect
                    wanted = str(expect)
                elif permission not in ROLE_PERMISSIONS[expect] or (
                    _key(method, path) in USER_ROW_ONLY and not has_user_row
                ):
                    ok = got == (403, "permission_denied")
                    wanted = "403 permission_denied"
                else:
                    ok = response.status_code < 500 and got[0] != 401 and got not in DENIALS
                    wanted = f"the route to run ({permission.value})"
                if not ok:
                    mismatches.append(f"{method} {mount} as {name}: got {got}, wanted {wanted}: {response.text[:200]}")
    assert not mismatches, f"{len(mismatches)} of {calls} calls:\n" + "\n".join(mismatches)
