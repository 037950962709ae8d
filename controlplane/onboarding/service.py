"""Self-serve signup, email verification and the onboarding checklist.

A signup is, in this order (each step's failure undoes all before it, so nothing is left behind):

1. checks that cost nothing (open, name, slug, tier, email, password policy), then the per-address
   limit (``CARDVAULT_SIGNUP_RATE`` an hour), then the password hash;
2. ``TenantService.create`` with the first tenant_admin: registry row, database, role. The onboarding
   row (SHA-256 of the verification token, expiry) and the verification mail are written in the
   transaction that registers the tenant, so they exist exactly when the tenant does (a crash at any
   later point leaves a whole starter tenant, never a half one; the mail waits in the outbox until the
   tenant is provisioned). A taken slug (also the loser of a race for it) is 409 ``slug_taken`` before
   anything is made;
3. for a paid tier with billing on: the provider's checkout (the tenant starts on starter; the webhook
   moves it to the paid tier once paid). With billing off the tier is set at once;
4. a login session for the new admin on the tenant's database (its first pooled connection), audited
   there as ``tenant.signup``.

If a step after 2 fails, the tenant is purged (database, role, files, registry row; the onboarding
and outbox rows go with the registry row), so a retry with the same slug works. The platform audit
records every signup that got past the checks (``tenant.signup``, actor ``signup``).
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import msgspec

from controlplane.audit import repository as audit_log
from controlplane.audit.service import platform_action
from controlplane.auth import tenant_repository as users
from controlplane.auth.models import Role
from controlplane.auth.passwords import normalize_email, validate_password
from controlplane.auth.service import Authenticator, TokenPair, hash_secret
from controlplane.context import AuditContext, TenantContext, client_address
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, ConfigError, InvalidSlug, OperationFailed, TooManyRequests
from controlplane.mail import outbox, templates
from controlplane.mail.models import MailKind
from controlplane.onboarding import repository
from controlplane.onboarding.errors import (
    SignupClosed,
    VerificationExpired,
    VerificationNotFound,
    VerificationUsed,
)
from controlplane.onboarding.models import (
    OnboardingChecklist,
    SignupRequest,
    SignupResult,
    SignupTenant,
    SlugAvailability,
    Verified,
)
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.provisioning.service import FirstAdmin, TenantService, validate_name
from controlplane.registry import repository as registry
from controlplane.registry.models import RESERVED_SLUGS, Tenant, Tier, parse_tier, validate_slug

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``GET /signup/slug-available`` may be asked this many times as often as ``POST /signup`` (per address).
SLUG_CHECKS_PER_SIGNUP = 30
_HOUR = 3600
#: What a verification token looks like (``secrets.token_urlsafe(32)``); anything else is unknown.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


class Checkout(Protocol):
    """What signup needs of billing (``controlplane.billing.service.BillingService``)."""

    async def checkout(self, tenant: Tenant, tier: Tier, interval: str = "month", *, email: str | None = None) -> str:
        """The provider's checkout URL for ``tenant`` to subscribe to ``tier`` (``email``: the customer's)."""
        ...


class Client(msgspec.Struct, frozen=True, kw_only=True):
    """Who is signing up, as the HTTP layer saw them."""

    #: The peer's address (behind trusted proxies: the forwarded one), the rate limits' key.
    address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


class Signups:
    """Signup, slug availability and email verification (the public ``/signup`` endpoints)."""

    def __init__(
        self,
        platform: Platform,
        tenants: TenantService,
        auth: Authenticator,
        pools: TenantPools,
        checkout: Checkout | None = None,
    ) -> None:
        self._p = platform
        self._tenants = tenants
        self._auth = auth
        self._pools = pools
        self._checkout = checkout

    # -- POST /signup ---------------------------------------------------------------------------

    async def signup(self, data: SignupRequest, client: Client, *, now: datetime | None = None) -> SignupResult:
        """Create the tenant, its first admin, their session, the onboarding row and the verification
        mail; all of it or nothing (see the module docstring)."""
        self._require_open()
        name, slug, tier = validate_name(data.name), validate_slug(data.slug), parse_tier(data.tier)
        email, password = normalize_email(data.email), validate_password(data.password)
        paid = tier is not Tier.STARTER and self._p.settings.billing.enabled
        if paid and self._checkout is None:
            raise ConfigError("billing is on but signup was given no checkout for paid tiers")
        await self._admit(f"signup:{client.address}", self._p.settings.signup.per_address_per_hour, "signups")
        ctx = AuditContext(
            actor="signup",
            actor_label=email,
            source_address=client_address(client.address),
            request_id=client.request_id,
        )
        details = {"name": name, "tier": tier.value, "email": email}
        async with platform_action(
            self._p.control, ctx, "tenant.signup", slug=slug, existing=False, details=details
        ) as act:
            admin = FirstAdmin(email=email, password_hash=await self._auth.passwords.hash(password))
            initial = Tier.STARTER if paid else tier
            record = self._record(name, slug, email, now or datetime.now(UTC))
            tenant = act.result(
                await self._tenants.create(
                    name=name, slug=slug, tier=initial.value, admin=admin, with_registration=record
                )
            )
            try:
                return await self._complete(tenant, data, email, tier if paid else None, client)
            except BaseException as exc:
                await self._undo(tenant, exc)
                raise

    async def _complete(
        self,
        tenant: Tenant,
        data: SignupRequest,
        email: str,
        paid_tier: Tier | None,
        client: Client,
    ) -> SignupResult:
        checkout_url = None
        if paid_tier is not None:
            assert self._checkout is not None
            checkout = self._checkout
            checkout_url = await self._step(
                "checkout", lambda: checkout.checkout(tenant, paid_tier, data.interval, email=email)
            )
        tokens = await self._step("session", lambda: self._open_session(tenant, email, client))
        return SignupResult(
            tenant=SignupTenant(
                id=tenant.id,
                slug=tenant.slug,
                name=tenant.name,
                tier=tenant.subscription_tier.value,
                status=tenant.status.value,
            ),
            tokens=tokens,
            requested_tier=paid_tier.value if paid_tier else tenant.subscription_tier.value,
            checkout_url=checkout_url,
        )

    async def _step(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run one step after the tenant exists; an unexpected error becomes ``OperationFailed``."""
        try:
            self._p.failpoints.hit(f"before:signup_{name}")
            return await run()
        except CardVaultError:
            raise
        except Exception as exc:
            raise OperationFailed(f"signup failed at step {name}: {exc}; nothing was kept", step=name) from exc

    async def _open_session(self, tenant: Tenant, email: str, client: Client) -> TokenPair:
        ref = TenantContext.of(tenant)
        async with self._pools.connection(tenant.id) as conn:
            _, user = await users.login_lookup(conn, email)
            assert user is not None, "the first admin was seeded by the provisioning"
            tokens = await self._auth.open_tenant_session(
                conn, ref, user["id"], Role.TENANT_ADMIN, source_address=client.address, user_agent=client.user_agent
            )
            ctx = AuditContext(
                actor=f"user:{user['id']}",
                actor_label=email,
                source_address=client_address(client.address),
                request_id=client.request_id,
            )
            await audit_log.record_tenant(conn, ctx, "tenant.signup", details={"tier": tenant.subscription_tier.value})
        return tokens

    def _record(
        self, name: str, slug: str, email: str, now: datetime
    ) -> Callable[[AsyncConn, uuid.UUID], Awaitable[None]]:
        """The onboarding row and the verification mail, written in the tenant's registration
        transaction: a tenant that exists always has them, whatever fails or crashes later."""
        token = secrets.token_urlsafe(32)
        expires_at = now + timedelta(seconds=self._p.settings.signup.verify_ttl)
        subject, body = templates.verification(
            base_url=self._p.settings.http.base_url, organisation=name, slug=slug, token=token, expires_at=expires_at
        )

        async def record(conn: AsyncConn, tenant_id: uuid.UUID) -> None:
            async def write() -> None:
                await repository.insert(conn, tenant_id, email, hash_secret(token), expires_at)
                await outbox.enqueue(conn, tenant_id, MailKind.VERIFY_EMAIL, email, subject, body)
                self._p.failpoints.hit("before:signup_commit")

            await self._step("record", write)

        return record

    async def _undo(self, tenant: Tenant, cause: BaseException) -> None:
        """Purge the half-signed-up tenant (its onboarding and outbox rows go with its registry row)."""
        log.warning("signup of %s failed (%s); removing the tenant", tenant.slug, cause)
        try:
            await self._tenants.purge(tenant.slug, expect=tenant.id)
        except Exception:
            log.error(
                "signup of %s failed and its tenant could not be removed now; the reconciler finishes it",
                tenant.slug,
                exc_info=True,
            )

    # -- GET /signup/slug-available -------------------------------------------------------------

    async def slug_available(self, slug: str, client: Client) -> SlugAvailability:
        """Whether ``slug`` can be signed up now (one indexed registry read); never an error for a bad slug."""
        self._require_open()
        limit = self._p.settings.signup.per_address_per_hour * SLUG_CHECKS_PER_SIGNUP
        await self._admit(f"signup-slug:{client.address}", limit, "slug checks")
        try:
            validate_slug(slug)
        except InvalidSlug as exc:
            reserved = slug in RESERVED_SLUGS
            return SlugAvailability(
                slug=slug, available=False, reason="reserved" if reserved else "invalid", detail=exc.detail
            )
        async with self._p.control.connection() as conn:
            taken = await registry.get_by_slug(conn, slug) is not None
        if taken:
            return SlugAvailability(slug=slug, available=False, reason="taken", detail=f"slug {slug!r} is taken")
        return SlugAvailability(slug=slug, available=True)

    # -- GET /signup/verify ---------------------------------------------------------------------

    async def verify(self, token: str, *, now: datetime | None = None) -> Verified:
        """Mark the signup whose verification link carries ``token`` verified."""
        if not _TOKEN.fullmatch(token):
            raise VerificationNotFound("unknown verification link")
        now = now or datetime.now(UTC)
        digest = hash_secret(token)
        async with self._p.control.connection() as conn:
            row = await repository.mark_verified(conn, digest, now)
            if row is not None:
                return Verified(slug=row["slug"], email=row["email"], verified_at=row["verified_at"])
            state = await repository.verification_state(conn, digest)
        if state is None:
            raise VerificationNotFound("unknown verification link")
        if state["email_verified_at"] is not None:
            raise VerificationUsed("this link was used already: the address is verified")
        raise VerificationExpired("this verification link has expired")

    # -- helpers --------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._p.settings.signup.enabled:
            raise SignupClosed("self-serve signup is closed on this service")

    async def _admit(self, key: str, limit: int, what: str) -> None:
        decision = await self._auth.limiter.hit(key, limit, _HOUR)
        if not decision.allowed:
            raise TooManyRequests(
                f"too many {what} from this address; try again later",
                headers=decision.headers(),
                retry_after=decision.reset_after,
            )


async def checklist(platform: Platform, tenant_conn: AsyncConn, tenant: TenantContext) -> OnboardingChecklist:
    """The onboarding checklist of ``tenant`` (``tenant_conn``: a connection to its own database)."""
    async with platform.control.connection() as conn:
        marks = await repository.control_marks(conn, tenant.id)
    own = await repository.tenant_marks(tenant_conn)
    email_verified = bool(marks and marks["email_verified"])
    plan_chosen = bool(marks and (marks["tier"] != Tier.STARTER.value or marks["subscribed"]))
    first_card, first_invited_user = bool(own["first_card"]), bool(own["first_invited_user"])
    return OnboardingChecklist(
        email_verified=email_verified,
        plan_chosen=plan_chosen,
        first_card=first_card,
        first_invited_user=first_invited_user,
        complete=email_verified and plan_chosen and first_card and first_invited_user,
    )
