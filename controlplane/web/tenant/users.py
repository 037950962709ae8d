"""The workspace's users and invitations (``{base}/users``): listed for whoever holds ``users:read``,
changed by whoever holds ``users:manage``.

Every action goes through ``accounts.service.Accounts``, as ``/t/{slug}/api/users`` does, so the rules
(nobody hands out more than they hold or changes their own role or flag, the last tenant_admin who can
manage users stays), the quota on users and the audit rows (``user.create``, ``user.update``,
``user.invite``) are the API's. Like the API's request wrapper, a page commits before the follow-up that
must see the commit (dropping the tenant's cached principals, queueing the invitation mail), and a
refusal it answers with the form again (400, 403, 409, 429) rolls back whatever the service began.

Revoking an invitation disables the invited account: a disabled account's invitation cannot be accepted
(``accounts.repository.accept_invite``); through the API it is ``PATCH {"disabled": true}``.

A new invitation's link is shown once, on the page answering the form: the server keeps only its hash,
so it cannot survive a redirect. Every other action redirects (post/redirect/get).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Template

from controlplane.accounts.models import UserCreate, UserCreated, UserUpdate
from controlplane.accounts.routes import after_commit, queue_invitation_mail
from controlplane.accounts.service import Accounts
from controlplane.auth.models import TENANT_ROLES, Permission
from controlplane.auth.service import Authenticator
from controlplane.context import TenantRequest
from controlplane.errors import CardVaultError, ValidationFailed
from controlplane.http.state import AUTH_STATE_KEY, PLATFORM_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.mail.templates import invitation_link
from controlplane.platform import Platform
from controlplane.usage.quotas import limits_for
from controlplane.web.pages import page, see_other
from controlplane.web.sessions import tenant_base

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Ctx = NamedDependency[TenantRequest]
T = TypeVar("T")

#: Users per page.
PAGE_SIZE = 50
#: Statuses of the refusals a page answers with its form and the reason (anything else: the error page).
REFUSALS = frozenset({400, 403, 409, 429})
#: ``?done=`` after a redirect: what the notice says (fixed texts: nothing of the query is shown).
DONE = {
    "role": "The role was changed.",
    "disabled": "The user was disabled; their sessions have ended.",
    "enabled": "The user was enabled.",
    "revoked": "The invitation was revoked.",
}
MANAGE = requires(Permission.USERS_MANAGE)
ROLE_CHOICES = [(role.value, role.value.replace("_", " ")) for role in TENANT_ROLES]


def parse_form(kind: type[T], values: dict[str, Any]) -> T:
    """``values`` as the API's input type ``kind`` (same limits); ``ValidationFailed`` saying what is wrong."""
    try:
        return msgspec.convert(values, kind)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(str(exc)) from None


def accounts_of(request: Request[Any, Any, Any], ctx: TenantRequest) -> Accounts:
    """The request's ``Accounts``, made as the API's ``provide_accounts`` makes it."""
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    return Accounts(ctx, auth, limits_for(platform.control, ctx.tenant.id))


async def _settle(request: Request[Any, Any, Any], ctx: TenantRequest, accounts: Accounts) -> None:
    """Commit, then what the API's wrapper does after its commit."""
    await ctx.conn.commit()
    await after_commit(request, ctx.tenant, accounts)


async def users_page(
    request: Request[Any, Any, Any],
    ctx: TenantRequest,
    *,
    status_code: int = 200,
    flash_error: str | None = None,
    invited: UserCreated | None = None,
    form: dict[str, str] | None = None,
) -> Template:
    """The users page: the list (``?cursor=`` pages it on a GET), the invitation just made, the form's values."""
    cursor = request.query_params.get("cursor") if request.method == "GET" else None
    listing = await accounts_of(request, ctx).list_users(PAGE_SIZE, cursor)
    base = tenant_base(request.scope)
    link = None
    if invited is not None and invited.invite_token is not None:
        platform: Platform = request.app.state[PLATFORM_STATE_KEY]
        link = invitation_link(platform.settings.http.base_url, ctx.tenant.slug, invited.invite_token)
    return page(
        request,
        "tenant/users.html",
        principal=ctx.principal,
        title="Users",
        users=listing.items,
        next_url=f"{base}/users?cursor={listing.next_cursor}" if listing.next_cursor else None,
        first_url=f"{base}/users" if cursor else None,
        can_manage=ctx.principal.can(Permission.USERS_MANAGE),
        my_id=ctx.principal.user_id,
        roles=ROLE_CHOICES,
        invited=invited,
        invite_link=link,
        form=form or {"email": "", "role": "user"},
        flash=DONE.get(request.query_params.get("done", "")) if request.method == "GET" else None,
        flash_error=flash_error,
        status_code=status_code,
    )


async def _refused(request: Request[Any, Any, Any], ctx: TenantRequest, exc: CardVaultError, **kw: Any) -> Template:
    """The page again with the refusal, after rolling back what the service began (as the API would)."""
    await ctx.conn.rollback()
    return await users_page(request, ctx, flash_error=exc.detail, status_code=exc.status, **kw)


@get("/users", name="tenant_ui_users", opt=requires(Permission.USERS_READ))
async def list_users(request: Request[Any, Any, Any], tenant_request: Ctx) -> Template:
    return await users_page(request, tenant_request)


@post("/users/invite", name="tenant_ui_users_invite", opt=MANAGE, status_code=200)
async def invite(request: Request[Any, Any, Any], tenant_request: Ctx, data: Form) -> Response[Any]:
    form = {"email": data.get("email", "").strip()[:254], "role": data.get("role", "")}
    accounts = accounts_of(request, tenant_request)
    try:
        created = queue_invitation_mail(request, await accounts.create_user(parse_form(UserCreate, form)))
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        return await _refused(request, tenant_request, exc, form=form)
    await _settle(request, tenant_request, accounts)
    return await users_page(request, tenant_request, invited=created)


@post(
    "/users/{user_id:int}/invitation",
    name="tenant_ui_users_reinvite",
    opt=MANAGE,
    status_code=200,
)
async def reinvite(request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int]) -> Response[Any]:
    accounts = accounts_of(request, tenant_request)
    try:
        created = queue_invitation_mail(request, await accounts.reissue_invitation(user_id))
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        return await _refused(request, tenant_request, exc)
    await _settle(request, tenant_request, accounts)
    return await users_page(request, tenant_request, invited=created)


async def _update(
    request: Request[Any, Any, Any], ctx: TenantRequest, user_id: int, values: dict[str, Any], done: str
) -> Response[Any]:
    accounts = accounts_of(request, ctx)
    try:
        await accounts.update_user(user_id, parse_form(UserUpdate, values))
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        return await _refused(request, ctx, exc)
    await _settle(request, ctx, accounts)
    return see_other(request, f"{tenant_base(request.scope)}/users?done={done}")


@post("/users/{user_id:int}/role", name="tenant_ui_users_role", opt=MANAGE, status_code=303)
async def change_role(
    request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int], data: Form
) -> Response[Any]:
    return await _update(request, tenant_request, user_id, {"role": data.get("role", "")}, "role")


@post("/users/{user_id:int}/disable", name="tenant_ui_users_disable", opt=MANAGE, status_code=303)
async def disable(request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int]) -> Response[Any]:
    return await _update(request, tenant_request, user_id, {"disabled": True}, "disabled")


@post("/users/{user_id:int}/enable", name="tenant_ui_users_enable", opt=MANAGE, status_code=303)
async def enable(request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int]) -> Response[Any]:
    return await _update(request, tenant_request, user_id, {"disabled": False}, "enabled")


@post("/users/{user_id:int}/revoke", name="tenant_ui_users_revoke", opt=MANAGE, status_code=303)
async def revoke(request: Request[Any, Any, Any], tenant_request: Ctx, user_id: FromPath[int]) -> Response[Any]:
    """Revoke a pending invitation: the invited account is disabled (see the module docstring)."""
    user = await accounts_of(request, tenant_request).get_user(user_id)
    if not user.invited:
        return await users_page(
            request,
            tenant_request,
            flash_error=f"{user.email} has no pending invitation (it was accepted); disable the user instead.",
            status_code=409,
        )
    return await _update(request, tenant_request, user_id, {"disabled": True}, "revoked")


HANDLERS: list[Any] = [list_users, invite, reinvite, change_role, disable, enable, revoke]
