"""The rules of a tenant's accounts: profile and password, users and invitations, API keys, settings.

An ``Accounts`` works on one authenticated request (``TenantRequest``: its connection, tenant and
principal) and never commits: the request wrapper does, or rolls back when something here raises.
Every write is recorded in the tenant's ``audit_log`` in the same transaction, never with a secret,
and sets ``changed``: the wrapper then drops the tenant's cached principals *after* the commit (dropped
before it, a concurrent request could cache the old state again, e.g. a just-disabled user).

Rules beyond the route's permission:

- nobody hands out more than they have: a user's or an API key's role may not be above the actor's
  role, and a permission may be granted only by someone who holds it;
- nobody changes their own role, permissions or disabled flag (no self-lockout, no self-promotion);
- the last tenant_admin who can manage users (enabled, invitation accepted, ``users:manage`` not denied)
  cannot be demoted, disabled or lose ``users:manage``; changes of roles, permissions and disabled flags
  lock everyone who may manage users first, so concurrent changes cannot together break the rule, and
  are refused if the actor's own role or permissions changed since the request was authorised;
- disabling a user ends all of their sessions (their access tokens fail on the next request);
- a password change needs the current password (throttled like a login) and ends every other session.
"""

from __future__ import annotations

import secrets
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

import msgspec
from psycopg import errors as pg_errors

from controlplane.accounts import guards, repository
from controlplane.accounts.errors import EmailTaken, InvitationAccepted, WrongPassword
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
from controlplane.audit import repository as audit
from controlplane.auth import session_repository as sessions
from controlplane.auth import tenant_repository as users
from controlplane.auth.models import Permission, PrincipalKind, Role, effective_permissions, parse_overrides
from controlplane.auth.passwords import normalize_email, validate_password
from controlplane.auth.service import API_KEY_TIERS, Authenticator, api_key_maker, expiry, hash_secret, new_api_key
from controlplane.auth.session_repository import SessionTable
from controlplane.cards.models import changes
from controlplane.cards.service import enforce_quota
from controlplane.context import TenantRequest
from controlplane.errors import (
    FeatureNotInTier,
    NotFound,
    PermissionDenied,
    TooManyRequests,
    ValidationFailed,
)
from controlplane.paging import MAX_ID, decode_cursor, encode_cursor
from controlplane.registry.models import LimitLookup, QuotaType

#: The users listing's cursors (ordered by id).
_USERS = "id"
_EMAIL_INDEX = "users_email_lower_key"
_SESSIONS: SessionTable = "auth_sessions"


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _user(row: Mapping[str, Any]) -> User:
    role = Role(row["tenant_role"])
    overrides = {k: v for k, v in (row["permissions"] or {}).items() if isinstance(v, bool)}
    return User(
        id=row["id"],
        email=row["email"],
        role=role.value,
        permissions=overrides,
        effective_permissions=sorted(p.value for p in effective_permissions(role, overrides)),
        display_name=row["display_name"],
        disabled=row["disabled"],
        invited=row["invited"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_login_at=row["last_login_at"],
    )


def _api_key(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(**{("role" if k == "tenant_role" else k): v for k, v in row.items()})


def _overrides(raw: Mapping[str, bool]) -> dict[Permission, bool]:
    try:
        return parse_overrides(raw)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="permissions") from None


class Accounts:
    """Accounts of the request's tenant, as the request's principal may see and change them."""

    def __init__(self, request: TenantRequest, auth: Authenticator, quota_limits: LimitLookup) -> None:
        self._conn = request.conn
        self._tenant = request.tenant
        self._principal = request.principal
        self._audit = request.audit
        self._auth = auth
        self._limits = quota_limits
        #: Something was written: once the transaction commits, the tenant's cached principals must go.
        self.changed = False

    async def _record(self, action: str, entity: str, entity_id: object, details: dict[str, Any] | None = None) -> None:
        """Audit a change (and note it: the request wrapper drops the cached principals after commit)."""
        await audit.record_tenant(self._conn, self._audit, action, entity, entity_id, details)
        self.changed = True

    # -- guards ---------------------------------------------------------------------------------

    def _own_user_id(self, what: str) -> int:
        """The caller's user id, if the caller is a logged-in user (not a key, not an impersonation)."""
        principal = self._principal
        if principal.kind is not PrincipalKind.USER or principal.user_id is None:
            raise PermissionDenied(
                f"{what} belongs to a logged-in user; this {principal.kind.value} has no account of its own",
                permission=Permission.SELF.value,
            )
        return principal.user_id

    async def _user_row(self, user_id: int) -> dict[str, Any]:
        row = await users.get_user(self._conn, user_id) if 1 <= user_id <= MAX_ID else None
        if row is None:
            raise NotFound(f"no user with id {user_id}", resource="user", id=user_id)
        return row

    @asynccontextmanager
    async def _unique_email(self) -> AsyncIterator[None]:
        try:
            async with self._conn.transaction():
                yield
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name != _EMAIL_INDEX:
                raise
            raise EmailTaken("another user of this tenant already has this email") from None

    # -- /me ------------------------------------------------------------------------------------

    async def me(self) -> Profile:
        principal = self._principal
        row = None
        if principal.kind is PrincipalKind.USER and principal.user_id is not None:
            row = await users.get_user(self._conn, principal.user_id)
        return Profile(
            kind=principal.kind.value,
            subject=principal.subject,
            id=row["id"] if row else None,
            email=row["email"] if row else None,
            display_name=row["display_name"] if row else None,
            role=principal.role.value,
            permissions=sorted(p.value for p in principal.permissions),
        )

    async def update_me(self, data: ProfileUpdate) -> Profile:
        user_id = self._own_user_id("a profile")
        values = changes(data)
        if values:
            await users.update_user(self._conn, user_id, values)
            await self._record("me.update", "user", user_id, {"changed": sorted(values)})
        return await self.me()

    async def change_password(self, data: PasswordChange) -> None:
        """Check the current password (throttled per user), set the new one, end every other session."""
        user_id = self._own_user_id("a password")
        settings = self._auth.settings
        key, window = f"password:{self._tenant.id}:{user_id}", int(settings.login_window)
        decision = await self._auth.limiter.check(key, settings.login_max_failures, window)
        if not decision.allowed:
            raise TooManyRequests(
                "too many wrong passwords; try again later",
                headers={"Retry-After": str(decision.reset_after)},
                retry_after=decision.reset_after,
            )
        current = await repository.password_hash_of(self._conn, user_id)
        if current is None or not await self._auth.passwords.verify(current, data.current_password):
            await self._auth.limiter.fail(key, window)
            raise WrongPassword("the current password is wrong")
        await self._auth.limiter.clear(key, window)
        new_hash = await self._auth.passwords.hash(validate_password(data.new_password))
        await users.update_user(self._conn, user_id, {"password_hash": new_hash})
        ended = await sessions.revoke_all(self._conn, _SESSIONS, user_id, except_session=self._principal.session_id)
        await self._record("me.password", "user", user_id, {"sessions_ended": ended})

    async def my_sessions(self) -> list[Session]:
        user_id = self._own_user_id("a session list")
        rows = await sessions.list_sessions(self._conn, _SESSIONS, user_id)
        return [
            Session(
                id=row.id,
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                expires_at=row.expires_at,
                source_address=row.source_address,
                user_agent=row.user_agent,
                current=row.id == self._principal.session_id,
            )
            for row in rows
        ]

    async def revoke_my_session(self, session_id: uuid.UUID) -> None:
        user_id = self._own_user_id("a session")
        if not await sessions.revoke(self._conn, _SESSIONS, session_id, user_id=user_id):
            raise NotFound(f"you have no live session {session_id}", resource="session", id=str(session_id))
        await self._record("session.revoke", "session", session_id, {"user_id": user_id})

    # -- /users ---------------------------------------------------------------------------------

    async def list_users(self, limit: int, cursor: str | None) -> UserPage:
        after = decode_cursor(cursor, _USERS, int)[1] if cursor else 0
        rows = await repository.list_users(self._conn, after_id=after, limit=limit + 1)
        items = [_user(row) for row in rows[:limit]]
        last = rows[limit - 1]["id"] if len(rows) > limit else None
        next_cursor = encode_cursor(_USERS, last, last) if last is not None else None
        return UserPage(items=items, next_cursor=next_cursor)

    async def get_user(self, user_id: int) -> User:
        return _user(await self._user_row(user_id))

    async def create_user(self, data: UserCreate) -> UserCreated:
        """A user with a password, or (without one) an invitation whose token is answered only here."""
        email = normalize_email(data.email)
        role = Role(data.role)
        overrides = _overrides(data.permissions or {})
        guards.check_grantable(self._principal, role, overrides)
        token: str | None = None
        invite_hash, invite_expires_at = None, None
        if data.password is not None:
            password_hash = await self._auth.passwords.hash(validate_password(data.password))
        else:  # an empty hash never verifies: the account is usable only once the invitation is accepted
            password_hash, token = "", secrets.token_urlsafe(32)
            invite_hash, invite_expires_at = hash_secret(token), expiry(self._auth.settings.invite_ttl)
        # After the (slow) password hash: the counter stays locked until the request commits.
        await enforce_quota(self._conn, QuotaType.USERS, self._limits)
        async with self._unique_email():
            row = await repository.insert_user(
                self._conn,
                email=email,
                password_hash=password_hash,
                role=role.value,
                display_name=data.display_name,
                permissions={p.value: v for p, v in overrides.items()},
                invite_hash=invite_hash,
                invite_expires_at=invite_expires_at,
            )
        details = {"email": email, "role": role.value, "invited": token is not None}
        await self._record("user.create", "user", row["id"], details)
        user = _user(row)
        return UserCreated(**msgspec.structs.asdict(user), invite_token=token, invite_expires_at=invite_expires_at)

    async def update_user(self, user_id: int, data: UserUpdate) -> User:
        principal = self._principal
        guarded = any(field is not msgspec.UNSET for field in (data.role, data.permissions, data.disabled))
        # Lock everyone who may manage users first (always in the same order) so that concurrent changes
        # of roles, permissions or disabled flags queue, and each one sees what the others left.
        locked = await repository.lock_user_managers(self._conn) if guarded else []
        managers = {int(row["id"]): row for row in locked}
        current = await self._user_row(user_id)
        old_role = Role(current["tenant_role"])
        if old_role.rank > principal.role.rank:
            raise PermissionDenied(
                f"a {principal.role.value} cannot change a {old_role.value}", permission=Permission.USERS_MANAGE.value
            )
        values: dict[str, Any] = {}
        new_role = old_role
        if data.role is not msgspec.UNSET and data.role != old_role:
            new_role = Role(data.role)
            values["tenant_role"] = new_role.value
        if data.permissions is not msgspec.UNSET:
            overrides = _overrides(data.permissions)
            guards.check_grantable(self._principal, None, overrides)
            values["permissions"] = {p.value: v for p, v in overrides.items()}
        guards.check_grantable(self._principal, new_role, {})
        if data.disabled is not msgspec.UNSET and data.disabled != current["disabled"]:
            values["disabled"] = data.disabled
        if data.display_name is not msgspec.UNSET:
            values["display_name"] = data.display_name
        if user_id == principal.user_id and values.keys() & {"tenant_role", "permissions", "disabled"}:
            raise PermissionDenied(
                "you cannot change your own role, permissions or disabled flag; ask another tenant_admin",
                permission=Permission.USERS_MANAGE.value,
            )
        if guarded:
            kept = values.get("permissions", current["permissions"])
            still_able = guards.manages_users(new_role, kept, disabled=values.get("disabled", current["disabled"]))
            guards.keep_a_user_manager(user_id, managers, still_able)
            guards.check_actor_unchanged(principal, managers)
        row = await users.update_user(self._conn, user_id, values)
        assert row is not None
        ended = await sessions.revoke_all(self._conn, _SESSIONS, user_id) if values.get("disabled") else 0
        if values:
            details: dict[str, Any] = {"changed": sorted(values)}
            details.update({k: values[k] for k in ("tenant_role", "disabled", "permissions") if k in values})
            if ended:
                details["sessions_ended"] = ended
            await self._record("user.update", "user", user_id, details)
        return _user(row)

    async def reissue_invitation(self, user_id: int) -> UserCreated:
        current = await self._user_row(user_id)
        role = Role(current["tenant_role"])
        guards.check_grantable(self._principal, role, {})
        token = secrets.token_urlsafe(32)
        expires_at = expiry(self._auth.settings.invite_ttl)
        row = await repository.reissue_invite(self._conn, user_id, hash_secret(token), expires_at)
        if row is None:
            raise InvitationAccepted(f"user {user_id} has no pending invitation (it was accepted or never made)")
        await self._record("user.invite", "user", user_id, {"email": row["email"]})
        user = _user(row)
        return UserCreated(**msgspec.structs.asdict(user), invite_token=token, invite_expires_at=expires_at)

    # -- /api-keys ------------------------------------------------------------------------------

    async def list_api_keys(self) -> list[ApiKey]:
        return [_api_key(row) for row in await repository.list_api_keys(self._conn)]

    async def create_api_key(self, data: ApiKeyCreate) -> ApiKeyCreated:
        tier = self._tenant.tier
        if tier not in API_KEY_TIERS:
            raise FeatureNotInTier(f"API access is not part of the {tier.value} tier", tier=tier.value)
        role = Role(data.role)
        if role.rank > self._principal.role.rank:
            raise PermissionDenied(
                f"a {self._principal.role.value} cannot make a {role.value} key",
                permission=Permission.API_KEYS_MANAGE.value,
            )
        key, prefix, key_hash = new_api_key(self._tenant.id)
        requested = None if data.expires_in_days is None else expiry(data.expires_in_days * 86400.0)
        maker = api_key_maker(self._principal, requested)  # a user, or an impersonating admin (bounded)
        expires_at = maker.expires_at
        row = await repository.insert_api_key(
            self._conn,
            name=data.name,
            prefix=prefix,
            key_hash=key_hash,
            role=role.value,
            created_by=maker.user_id,
            expires_at=expires_at,
            created_by_admin=maker.admin_id,
            admin_session=maker.admin_session,
        )
        details = {"name": data.name, "role": role.value, "prefix": prefix, "expires_at": expires_at}
        await self._record("api_key.create", "api_key", row["id"], msgspec.to_builtins(details))
        return ApiKeyCreated(**msgspec.structs.asdict(_api_key(row)), key=key)

    async def revoke_api_key(self, key_id: int) -> None:
        row = await repository.revoke_api_key(self._conn, key_id) if 1 <= key_id <= MAX_ID else None
        if row is None:
            raise NotFound(f"no API key with id {key_id}", resource="api_key", id=key_id)
        await self._record("api_key.revoke", "api_key", key_id, {"name": row["name"]})

    # -- /settings ------------------------------------------------------------------------------

    async def get_settings(self) -> TenantSettings:
        return self._settings(await repository.get_settings(self._conn))

    async def update_settings(self, data: SettingsUpdate) -> TenantSettings:
        values = changes(data)
        zone = values.get("timezone")
        if zone is not None and zone not in _timezones():
            raise ValidationFailed(f"unknown time zone {zone!r}; use an IANA name like Europe/Zurich", field="timezone")
        stored = dict((await repository.get_settings(self._conn))["settings"])
        stored.update(values)
        row = await repository.put_settings(self._conn, {k: v for k, v in stored.items() if v is not None})
        if values:
            await self._record("settings.update", "settings", None, {"changed": values})
        return self._settings(row)

    @staticmethod
    def _settings(row: Mapping[str, Any]) -> TenantSettings:
        # Only known keys, and only values of the right type: anything else stored earlier is ignored.
        fields = ("collection_name", "default_card_sort", "locale", "timezone")
        known = {k: v for k, v in row["settings"].items() if k in fields and isinstance(v, str)}
        return TenantSettings(**known, updated_at=row["updated_at"])
