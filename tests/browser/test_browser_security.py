"""What the browser itself enforces for the pages: the session cookies' flags (HttpOnly, SameSite, path
scoped per area and per workspace, unreadable by page scripts), a forged form from another origin that is
refused and changes nothing, and that the watch on the app's pages does catch a CSP violation."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.browser.browser_support import Watched, sign_in
from tests.integration.auth_support import USER_PASSWORD, create_tenant
from tests.processes import free_port

#: A real browser against a real service (seconds per test); `make test` runs them.
pytestmark = pytest.mark.slow


class Attacker:
    """A page on another origin (``http://{host}:{port}/``) that posts a form to the app as soon as it loads."""

    def __init__(self) -> None:
        self.body = b""
        self.port = free_port()

    def arm(self, action: str, fields: dict[str, str]) -> None:
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
        )
        self.body = (
            f'<!doctype html><html lang="en"><title>Win a prize</title><body>'
            f'<form method="post" action="{html.escape(action)}">{inputs}</form>'
            f"<script>document.forms[0].submit()</script></body></html>"
        ).encode()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    page = Attacker()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(page.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", page.port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield page
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_session_cookies_are_httponly_samesite_path_scoped_and_unreadable_by_scripts(
    watched: Watched, api: httpx.AsyncClient, super_admin: str
) -> None:
    acme = await create_tenant(api, "acme")
    page = await watched.page()
    await sign_in(page, "/admin/ui/", super_admin, USER_PASSWORD)
    await sign_in(page, "/t/acme/sign-in", acme.admin_email, acme.admin_password)

    cookies = {(c["name"], c["path"]): c for c in await watched.context.cookies()}
    for path in ("/admin/ui", "/t/acme"):
        for name in ("cv_access", "cv_refresh"):
            cookie = cookies[(name, path)]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax", cookie
    csrf = cookies[("cv_csrf", "/")]
    assert csrf["httpOnly"] and csrf["sameSite"] == "Strict"
    workspaces = cookies[("cv_workspaces", "/")]
    assert workspaces["httpOnly"]
    assert {name for name, _ in cookies} == {"cv_access", "cv_refresh", "cv_csrf", "cv_workspaces"}
    # Each area's pages get only their own session, and no page script can read any cookie.
    for url, path in (("/admin/ui/", "/admin/ui"), ("/t/acme/cards", "/t/acme")):
        sent = await watched.context.cookies(f"{watched.origin}{url}")
        assert {c["path"] for c in sent if c["name"] in ("cv_access", "cv_refresh")} == {path}
        await page.goto(url)
        assert await page.evaluate("document.cookie") == ""


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["same-site-other-origin", "cross-site"])
async def test_a_form_posted_from_another_origin_is_refused_and_changes_nothing(
    watched: Watched, super_admin: str, attacker: Attacker, host: str
) -> None:
    page = await watched.page()
    await sign_in(page, "/admin/ui/", super_admin, USER_PASSWORD)
    # Even with the victim's own CSRF token (as if it had leaked), a post from elsewhere is refused.
    token = await page.locator('input[name="csrf_token"]').first.input_value()
    attacker.arm(f"{watched.origin}/admin/ui/sign-out", {"csrf_token": token})
    watched.allow(r"status of 403")  # the refusal page's own status line in the console

    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.goto(f"http://{host}:{attacker.port}/")
    response = await posted.value
    await page.wait_for_url(f"{watched.origin}/admin/ui/**")  # the app's answer is on screen
    await page.wait_for_load_state()
    sent = (await response.request.all_headers()).get("cookie", "")
    if host == "127.0.0.1":
        # Same site (ports do not count): the browser sends the session, the server refuses the origin.
        assert "cv_access=" in sent and "cv_csrf=" in sent
        assert response.status == 403
        assert "Not allowed" in await page.locator("h1").inner_text()
    else:
        # Cross-site: SameSite keeps every session cookie home; the post is nobody's and asks to sign in.
        assert "cv_access=" not in sent and "cv_refresh=" not in sent and "cv_csrf=" not in sent
        assert response.status == 303 and (await response.header_value("location") or "").startswith("/admin/ui/")

    await page.goto("/admin/ui/")
    assert await page.get_by_role("button", name="Sign out").is_visible()  # still signed in


async def test_the_watch_on_the_pages_catches_a_csp_violation(watched: Watched) -> None:
    page = await watched.page()
    await page.goto("/admin/ui/")
    assert watched.problems == []
    async with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
        await page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.injected = true";
                document.body.append(script);
            }"""
        )
    assert await page.evaluate("window.injected === undefined")
    assert any("Content Security Policy" in problem for problem in watched.problems), watched.problems
    watched.problems.clear()
