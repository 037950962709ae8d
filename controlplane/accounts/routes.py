"""HTTP face of a tenant's accounts: ``/me``, ``/users``, ``/api-keys``, ``/settings``.

Mounted with the CardVault API (``/t/{slug}/api`` and ``/api``), so the tenant API's wiring has already
resolved the tenant, authenticated the caller and checked the route's permission (``opt``) when a
handler runs. Handlers take one dependency, ``accounts``: an ``Accounts`` on the request's connection,
committed after the handler returns and rolled back if it raises; after a commit that changed
anything, this instance's cached principals of the tenant are dropped.

An invitation (a user created without a password, or a re-issued invitation) is also mailed: once the
tenant's transaction has committed, the invitation mail (with the link
``{CARDVAULT_PUBLIC_URL}/t/{slug}/invitations/accept?token=...``) goes into the control database's
outbox, and the mail job delivers it. The token is in the response as before.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from controlplane.accounts import directory
from controlplane.accounts.models import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    PasswordChange,
    Profile,
    ProfileUpdate,
    Session,
    SettingsUpdate,
    TenantSettings,
    User,
    UserCreate,
    UserCreated,
    UserPage,
    UserUpdate,
)
from controlplane.accounts.service import Accounts
from controlplane.auth.models import Permission
from controlplane.auth.service import Authenticator
from controlplane.context import TenantContext
from controlplane.http.params import Cursor, Limit
from controlplane.http.state import AUTH_STATE_KEY, PLATFORM_STATE_KEY, TENANT_POOLS_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.http.tenant_request import open_tenant_request
from controlplane.mail import outbox, templates
from controlplane.mail.models import MailKind
from controlplane.paging import TENANT_PAGES
from controlplane.platform import Platform
from controlplane.usage.quotas import limits_for

Deps = NamedDependency[Accounts]
log = logging.getLogger(__name__)
#: Invitations a request made, to mail once its transaction has committed.
_INVITATIONS_KEY = "cardvault.invitations"


async def provide_accounts(request: Request[Any, Any, Any]) -> AsyncIterator[Accounts]:
    """The request's ``Accounts``; its transaction is committed (or rolled back) when the handler is done.

    It opens the tenant request itself rather than depending on ``tenant_request``: the cached principals
    must be dropped after the commit, and Litestar ends sibling generator dependencies concurrently, in
    no set order. Dropped before the commit, a request in between could cache the old state again.
    """
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    async with open_tenant_request(request) as tenant_request:
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        accounts = Accounts(tenant_request, auth, limits_for(platform.control, tenant_request.tenant.id))
        yield accounts
    await after_commit(request, tenant_request.tenant, accounts)


async def after_commit(request: Request[Any, Any, Any], tenant: TenantContext, accounts: Accounts) -> None:
    """What follows a committed accounts change (the API's and the pages'): the tenant's cached principals
    are dropped, its entries in the workspace directory rebuilt, and its invitation mails queued."""
    if accounts.changed:
        auth: Authenticator = request.app.state[AUTH_STATE_KEY]
        await auth.principals_changed(tenant.id)
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        await directory.refresh(platform, request.app.state[TENANT_POOLS_STATE_KEY], tenant.id)
    await mail_invitations(request, tenant)


def queue_invitation_mail(request: Request[Any, Any, Any], created: UserCreated) -> UserCreated:
    """``created``, its invitation (if it is one) noted to be mailed after the commit."""
    if created.invite_token is not None:
        request.scope.setdefault("state", {}).setdefault(_INVITATIONS_KEY, []).append(created)
    return created


async def mail_invitations(request: Request[Any, Any, Any], tenant: TenantContext) -> None:
    """Queue the invitation mails of the request's (committed) invitations. A failure is logged, not
    answered: the invitations exist and their tokens are in the response."""
    invitations: list[UserCreated] = request.scope.get("state", {}).get(_INVITATIONS_KEY, [])
    if not invitations:
        return
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    try:
        async with platform.control.connection() as conn, conn.transaction():
            for created in invitations:
                assert created.invite_token is not None and created.invite_expires_at is not None
                subject, body = templates.invitation(
                    base_url=platform.settings.http.base_url,
                    slug=tenant.slug,
                    role=created.role,
                    token=created.invite_token,
                    expires_at=created.invite_expires_at,
                )
                await outbox.enqueue(conn, tenant.id, MailKind.INVITATION, created.email, subject, body)
    except Exception:
        log.error("could not queue %d invitation mail(s) of tenant %s", len(invitations), tenant.slug, exc_info=True)


_DEPENDENCIES = {"accounts": Provide(provide_accounts)}


class MeController(Controller):
    path = "/me"
    tags = ["me"]
    dependencies = _DEPENDENCIES

    @get("/", opt=requires(Permission.SELF), summary="Who I am: profile, role and effective permissions")
    async def get_me(self, accounts: Deps) -> Profile:
        return await accounts.me()

    @patch("/", opt=requires(Permission.SELF), summary="Change my display name")
    async def update_me(self, accounts: Deps, data: JSONBody[ProfileUpdate]) -> Profile:
        return await accounts.update_me(data)

    @put(
        "/password",
        opt=requires(Permission.SELF),
        status_code=204,
        summary="Change my password (needs the current one); ends my other sessions",
    )
    async def change_password(self, accounts: Deps, data: JSONBody[PasswordChange]) -> None:
        await accounts.change_password(data)

    @get("/sessions", opt=requires(Permission.SELF), summary="My live login sessions")
    async def list_sessions(self, accounts: Deps) -> list[Session]:
        return await accounts.my_sessions()

    @delete("/sessions/{session_id:uuid}", opt=requires(Permission.SELF), summary="End one of my sessions")
    async def revoke_session(self, accounts: Deps, session_id: FromPath[uuid.UUID]) -> None:
        await accounts.revoke_my_session(session_id)


class UsersController(Controller):
    path = "/users"
    tags = ["users"]
    dependencies = _DEPENDENCIES

    @get("/", opt=requires(Permission.USERS_READ), summary="List users (keyset pages by id)")
    async def list_users(self, accounts: Deps, cursor: Cursor = None, limit: Limit = TENANT_PAGES.default) -> UserPage:
        return await accounts.list_users(limit, cursor)

    @post(
        "/",
        opt=requires(Permission.USERS_MANAGE),
        summary="Create a user (with password) or invite one (without: the invite_token is shown once)",
    )
    async def create_user(
        self, request: Request[Any, Any, Any], accounts: Deps, data: JSONBody[UserCreate]
    ) -> UserCreated:
        return queue_invitation_mail(request, await accounts.create_user(data))

    @get("/{user_id:int}", opt=requires(Permission.USERS_READ), summary="One user")
    async def get_user(self, accounts: Deps, user_id: FromPath[int]) -> User:
        return await accounts.get_user(user_id)

    @patch(
        "/{user_id:int}",
        opt=requires(Permission.USERS_MANAGE),
        summary="Change a user's role, permissions, disabled flag or display name",
    )
    async def update_user(self, accounts: Deps, user_id: FromPath[int], data: JSONBody[UserUpdate]) -> User:
        return await accounts.update_user(user_id, data)

    @post(
        "/{user_id:int}/invitation",
        opt=requires(Permission.USERS_MANAGE),
        status_code=200,
        summary="Re-issue a pending invitation (the old token stops working; the new one is shown once)",
    )
    async def reissue_invitation(
        self, request: Request[Any, Any, Any], accounts: Deps, user_id: FromPath[int]
    ) -> UserCreated:
        return queue_invitation_mail(request, await accounts.reissue_invitation(user_id))


class ApiKeysController(Controller):
    path = "/api-keys"
    tags = ["api-keys"]
    dependencies = _DEPENDENCIES

    @get("/", opt=requires(Permission.API_KEYS_MANAGE), summary="List API keys (never the keys themselves)")
    async def list_api_keys(self, accounts: Deps) -> list[ApiKey]:
        return await accounts.list_api_keys()

    @post("/", opt=requires(Permission.API_KEYS_MANAGE), summary="Create an API key (the key is shown once)")
    async def create_api_key(self, accounts: Deps, data: JSONBody[ApiKeyCreate]) -> ApiKeyCreated:
        return await accounts.create_api_key(data)

    @delete("/{key_id:int}", opt=requires(Permission.API_KEYS_MANAGE), summary="Revoke an API key")
    async def revoke_api_key(self, accounts: Deps, key_id: FromPath[int]) -> None:
        await accounts.revoke_api_key(key_id)


class SettingsController(Controller):
    path = "/settings"
    tags = ["settings"]
    dependencies = _DEPENDENCIES

    @get("/", opt=requires(Permission.SETTINGS_READ), summary="The tenant's settings")
    async def get_settings(self, accounts: Deps) -> TenantSettings:
        return await accounts.get_settings()

    @patch("/", opt=requires(Permission.SETTINGS_MANAGE), summary="Change the tenant's settings (null clears one)")
    async def update_settings(self, accounts: Deps, data: JSONBody[SettingsUpdate]) -> TenantSettings:
        return await accounts.update_settings(data)


#: Mounted by the app next to ``TENANT_API_HANDLERS`` (under ``/t/{slug}/api`` and ``/api``).
ACCOUNT_HANDLERS: list[type[Controller]] = [MeController, UsersController, ApiKeysController, SettingsController]
