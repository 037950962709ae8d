"""HTTP face of onboarding: the public ``/signup`` endpoints and the tenant's ``/onboarding`` checklist.

``POST /signup``, ``GET /signup/slug-available`` and ``GET /signup/verify`` need no credential. Their
rate limits are keyed by the client address as the login throttle sees it (the connecting peer, or
the forwarded address when the peer is one of ``CARDVAULT_TRUSTED_PROXIES``: uvicorn resolves it).

``GET /onboarding`` is a tenant API route (mounted under ``/t/{slug}/api`` and ``/api``): the tenant
API wiring has resolved the tenant and checked that the caller belongs to it before it runs.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from controlplane.auth.models import Permission
from controlplane.context import TenantRequest
from controlplane.http.context import request_id
from controlplane.http.state import PLATFORM_STATE_KEY, SIGNUPS_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.onboarding.models import (
    OnboardingChecklist,
    SignupRequest,
    SignupResult,
    SlugAvailability,
    Verified,
)
from controlplane.onboarding.service import Client, Signups, checklist
from controlplane.platform import Platform

#: A query parameter of bounded length (the service says what is wrong with its content).
_Text = Annotated[str, QueryParameter(max_length=256)]


def _signups(request: Request[Any, Any, Any]) -> Signups:
    signups: Signups = request.app.state[SIGNUPS_STATE_KEY]
    return signups


def _client(request: Request[Any, Any, Any]) -> Client:
    return Client(
        address=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent", "")[:256] or None,
        request_id=request_id(request.scope),
    )


@post(
    "/signup",
    status_code=201,
    tags=["signup"],
    security=[],
    summary="Sign up: a new tenant, its first tenant_admin (logged in) and a verification mail",
)
async def signup(request: Request[Any, Any, Any], data: JSONBody[SignupRequest]) -> SignupResult:
    return await _signups(request).signup(data, _client(request))


@get(
    "/signup/slug-available",
    tags=["signup"],
    security=[],
    summary="Whether a slug can be signed up (invalid or reserved slugs answer available: false with why)",
)
async def slug_available(request: Request[Any, Any, Any], slug: _Text) -> SlugAvailability:
    return await _signups(request).slug_available(slug, _client(request))


@get(
    "/signup/verify",
    tags=["signup"],
    security=[],
    summary="Confirm a signup's email address (the link in the verification mail)",
)
async def verify(request: Request[Any, Any, Any], token: _Text) -> Verified:
    return await _signups(request).verify(token)


@get(
    "/onboarding",
    opt=requires(Permission.SETTINGS_READ),
    tags=["onboarding"],
    summary="The tenant's onboarding checklist: email verified, plan chosen, first card, first invited user",
)
async def onboarding(
    request: Request[Any, Any, Any], tenant_request: NamedDependency[TenantRequest]
) -> OnboardingChecklist:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    return await checklist(platform, tenant_request.conn, tenant_request.tenant)


#: Public handlers, mounted at the root.
SIGNUP_HANDLERS = [signup, slug_available, verify]
#: Tenant API handlers (next to ``TENANT_API_HANDLERS``).
TENANT_ONBOARDING_HANDLERS = [onboarding]
