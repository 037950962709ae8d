"""The workspace finder (``/workspaces``, outside any workspace): someone enters an email address and the
list of the workspaces it belongs to is mailed to that address, each with a sign-in link.

The page never tells whether an address belongs anywhere: every well-formed address gets the same
answer (same status, same body), and the work the request itself does is the same for all (a form check
and two rate-limit counts); the directory lookup and the mail's queueing run as a background task after
the answer is sent, so its duration says nothing either. The lookup reads the control database's
directory (``controlplane.accounts.directory``), never a tenant database.

Rate limits, per source address and per email address (so neither one client nor many can flood one
mailbox): over either, a 429 page, which again depends only on the counts, not on the address.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.background_tasks import BackgroundTask
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Template

from controlplane.accounts import directory
from controlplane.auth.service import Authenticator
from controlplane.http.context import source_address
from controlplane.http.state import AUTH_STATE_KEY, PLATFORM_STATE_KEY
from controlplane.platform import Platform
from controlplane.web.pages import page

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
log = logging.getLogger(__name__)

#: Finder requests per source address, and mails asked for one email address, per window.
PER_ADDRESS_LIMIT = 10
PER_EMAIL_LIMIT = 3
WINDOW_SECONDS = 3600
#: One "@", something either side, no spaces or control characters (the mail server judges the rest).
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")


def _form(request: Request[Any, Any, Any], *, email: str = "", error: str | None = None, status: int = 200) -> Template:
    return page(
        request,
        "tenant/workspaces.html",
        title="Find your workspaces",
        email=email,
        flash_error=error,
        status_code=status,
    )


@get("/workspaces", name="tenant_ui_finder_form")
async def finder_form(request: Request[Any, Any, Any]) -> Template:
    return _form(request)


async def _send_list(platform: Platform, email: str) -> None:
    """The background half: look the address up and queue the mail (nothing when it belongs nowhere)."""
    try:
        await directory.mail_workspace_list(platform, email)
    except Exception:
        log.error("workspace finder: could not queue a workspace list", exc_info=True)


@post("/workspaces", name="tenant_ui_finder_send", status_code=200)
async def finder_send(request: Request[Any, Any, Any], data: Form) -> Template:
    """The same answer for every well-formed address; the lookup and the mail happen after it."""
    email = data.get("email", "").strip()
    if len(email) > 254 or not _EMAIL.match(email):
        return _form(request, email=email[:254], error="Enter a valid email address.", status=400)
    auth: Authenticator = request.app.state[AUTH_STATE_KEY]
    digest = hashlib.sha256(email.lower().encode()).hexdigest()  # no address in the limiter's keys
    for key, limit in (
        (f"finder:address:{source_address(request.scope)}", PER_ADDRESS_LIMIT),
        (f"finder:email:{digest}", PER_EMAIL_LIMIT),
    ):
        decision = await auth.limiter.hit(key, limit, WINDOW_SECONDS)
        if not decision.allowed:
            minutes = -(-decision.reset_after // 60)
            error = f"Too many requests; try again in {minutes} minute{'s' if minutes != 1 else ''}."
            response = _form(request, email=email, error=error, status=429)
            response.headers.update(decision.headers())
            return response
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    response = page(request, "tenant/workspaces_sent.html", title="Check your mail")
    response.background = BackgroundTask(_send_list, platform, email)
    return response


HANDLERS: list[Any] = [finder_form, finder_send]
