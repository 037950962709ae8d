"""What the browser tests share: Debian's Chromium and how to launch it, a watched browser context (every
console error, uncaught page error and CSP violation on the app's own pages is a problem the test fails
on), full-page screenshots of the main pages, signing in through the forms, and a real PNG to upload.

Playwright never downloads a browser here: it drives the system's ``chromium`` package (``make
system-deps`` installs it). The context reaches loopback only; any other request (a CDN stylesheet on
the OpenID provider's page, say) is aborted, so a run never depends on the network.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Route, ViewportSize

#: Debian's Chromium (apt package ``chromium``); ``chromium`` on the PATH otherwise.
CHROMIUM = "/usr/lib/chromium/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
#: Screenshots of every run, under the checkout (gitignored).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
#: When set, screenshots are also copied there (``CARDVAULT_SCREENSHOTS_DIR=docs/screenshots``).
SCREENSHOTS_ENV = "CARDVAULT_SCREENSHOTS_DIR"
_OFF_LOOPBACK = re.compile(r"^[a-z]+://(?!(127\.0\.0\.1|localhost)(:\d+)?/)")
#: How long any one browser step may take (ms): a missing element fails fast instead of after 30 s.
STEP_TIMEOUT_MS = 10_000


def chromium_path() -> str:
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    assert found, "Chromium is not installed: run `make system-deps` (apt-get install chromium)"
    return found


class Watched:
    """A browser context on the app at ``origin`` that records what must not happen on the app's pages."""

    def __init__(self, context: BrowserContext, origin: str) -> None:
        self.context = context
        self.origin = origin
        self.problems: list[str] = []
        self._allowed: list[re.Pattern[str]] = []
        context.on("console", self._console)
        context.on("weberror", lambda error: self._record(f"uncaught error: {error.error}", error.page, None))

    @classmethod
    async def open(cls, browser: Browser, origin: str, *, javascript: bool = True) -> Watched:
        context = await browser.new_context(viewport=VIEWPORT, base_url=origin, java_script_enabled=javascript)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        await context.route(_OFF_LOOPBACK, _abort)
        return cls(context, origin)

    def allow(self, pattern: str) -> None:
        """Expect console errors matching ``pattern`` from here on (e.g. the status of a refused post)."""
        self._allowed.append(re.compile(pattern))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            source = message.location.get("url")
            self._record(f"console error: {message.text} (at {source})", message.page, source)

    def _record(self, text: str, page: Page | None, source: str | None) -> None:
        # Only what the app serves counts: the OpenID provider's or an attacker's pages are not ours to judge.
        ours = [url for url in (page.url if page else None, source) if url and url.startswith(self.origin)]
        if (page is not None or source) and not ours:
            return
        if not any(pattern.search(text) for pattern in self._allowed):
            self.problems.append(text)

    async def page(self) -> Page:
        return await self.context.new_page()


async def _abort(route: Route) -> None:
    await route.abort("blockedbyclient")


async def screenshot(page: Page, name: str) -> Path:
    """Save the whole of ``page`` as ``<name>.png`` (and copy it to ``$CARDVAULT_SCREENSHOTS_DIR``)."""
    path = _screenshot_path(name)
    await page.screenshot(path=str(path), full_page=True)
    _copy_out(path)
    return path


def _screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


def _copy_out(path: Path) -> None:
    extra = os.environ.get(SCREENSHOTS_ENV, "").strip()
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / path.name)


async def sign_in(page: Page, form_path: str, email: str, password: str) -> None:
    """Fill and send a sign-in form (admin or tenant: same labels) and wait for the page it leads to."""
    await page.goto(form_path)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign in", exact=True).click()


def png(width: int = 48, height: int = 32, rgb: tuple[int, int, int] = (37, 99, 235)) -> bytes:
    """A real (decodable) solid-colour PNG, so a browser can draw it and give it a natural width."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )
