"""Helpers of the page tests: a browser-like client (cookies kept, no bearer header), the CSRF token of
a rendered page, and signing in through the forms."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.integration.auth_support import SUPER_ADMIN_EMAIL, USER_PASSWORD

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_HX_HEADERS = re.compile(r'hx-headers=\'\{"X-CSRF-Token": "([^"]+)"\}\'')


def csrf_of(page: httpx.Response | str) -> str:
    """The CSRF token a rendered page carries (its forms' hidden field, else htmx's header)."""
    text = page if isinstance(page, str) else page.text
    found = _CSRF.search(text) or _HX_HEADERS.search(text)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


async def post_form(
    client: httpx.AsyncClient, path: str, data: dict[str, Any], *, from_page: str | None = None, **kwargs: Any
) -> httpx.Response:
    """POST ``data`` as a form with the CSRF token of ``from_page`` (default: ``path``'s own page)."""
    page = await client.get(from_page or path)
    return await client.post(path, data={**data, "csrf_token": csrf_of(page)}, **kwargs)


async def sign_in_admin(
    client: httpx.AsyncClient, email: str = SUPER_ADMIN_EMAIL, password: str = USER_PASSWORD
) -> httpx.Response:
    response = await post_form(
        client, "/admin/ui/sign-in", {"email": email, "password": password}, from_page="/admin/ui/"
    )
    assert response.status_code == 303, response.text
    return response


async def sign_in_tenant(
    client: httpx.AsyncClient, slug: str, email: str, password: str = USER_PASSWORD
) -> httpx.Response:
    response = await post_form(client, f"/t/{slug}/sign-in", {"email": email, "password": password})
    assert response.status_code == 303, response.text
    return response
