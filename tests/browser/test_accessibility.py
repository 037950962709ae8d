"""The main pages for keyboard and screen-reader users, checked in a real browser: ``lang`` set, exactly one
``h1``, every form control labelled (``<label for>`` or ``aria-label``), every link and button named, every
image with an ``alt``, ids unique (labels point at them); Tab visits every control in document order, each
with a visible focus ring; the skip link is the first stop and jumps into the content. Every page checked
is also saved as a screenshot."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page

from tests.browser.browser_support import Watched, screenshot, sign_in
from tests.integration.auth_support import USER_PASSWORD, create_tenant

#: A real browser against a real service (seconds per test); `make test` runs them.
pytestmark = pytest.mark.slow

#: What a page must get right whatever it shows; returns the problems found.
_AUDIT = """() => {
  const problems = [];
  if (!document.documentElement.lang) problems.push("no lang on <html>");
  const h1 = document.querySelectorAll("h1").length;
  if (h1 !== 1) problems.push(`${h1} h1 elements`);
  const aria = (el) => (el.getAttribute("aria-label") || "").trim() ||
    (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean)
      .map((id) => (document.getElementById(id) || {}).textContent || "").join(" ").trim();
  const show = (el) => el.outerHTML.slice(0, 160);
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const labelled = [...el.labels].some((label) => label.textContent.trim()) || aria(el);
    if (!labelled) problems.push(`unlabelled: ${show(el)}`);
  }
  for (const el of document.querySelectorAll("a[href], button, summary")) {
    const alts = [...el.querySelectorAll("img[alt]")].map((img) => img.alt).join("");
    if (!(el.textContent.trim() || aria(el) || alts.trim() || el.title)) problems.push(`no name: ${show(el)}`);
  }
  for (const img of document.querySelectorAll("img:not([alt])")) problems.push(`no alt: ${show(img)}`);
  const seen = new Map();
  for (const el of document.querySelectorAll("[id]")) seen.set(el.id, (seen.get(el.id) || 0) + 1);
  for (const [id, count] of seen) if (count > 1) problems.push(`id "${id}" used ${count} times`);
  return problems;
}"""

#: Marks the page's tab stops in document order (one per radio group); returns the index of the focused one.
_TAB_STOPS = """() => {
  const radios = new Set();
  window.__tabStops = [...document.querySelectorAll(
    "a[href], button, input, select, textarea, summary, [tabindex]")].filter((el) => {
      if (el.disabled || el.type === "hidden" || el.tabIndex < 0 || !el.checkVisibility()) return false;
      if (el.type !== "radio") return true;
      if (radios.has(el.name)) return false;
      radios.add(el.name);
      return true;
    });
  return [window.__tabStops.length, window.__tabStops.indexOf(document.activeElement)];
}"""

#: Where focus is now: its tab stop index, whether its focus ring shows, whether it is on screen.
_FOCUS = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const ring = (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0) || style.boxShadow !== "none";
  const box = el.getBoundingClientRect();
  const onScreen = box.width > 0 && box.height > 0 && box.left >= -1 && box.top >= -1 &&
    box.right <= window.innerWidth + 1 && box.bottom <= window.innerHeight + 1;  // scrolled to, within a pixel
  return {index: (window.__tabStops || []).indexOf(el), ring: el.matches(":focus-visible") && ring, onScreen,
          what: el.outerHTML.slice(0, 120), box: [box.left, box.top, box.right, box.bottom]};
}"""


async def _check(page: Page, path: str, shot: str | None = None) -> None:
    """Open ``path``, audit it and save its screenshot as ``shot``."""
    response = await page.goto(path)
    assert response is not None and response.ok, f"{path}: {response.status if response else 'no response'}"
    assert await page.evaluate(_AUDIT) == [], path
    if shot:
        await screenshot(page, shot)


async def _tabs_in_order(page: Page) -> None:
    """Tab from where focus is through every tab stop after it: document order, ring shown, on screen."""
    count, start = await page.evaluate(_TAB_STOPS)
    assert count > start + 1, "the page has nothing to tab to"
    for expected in range(start + 1, count):
        await page.keyboard.press("Tab")
        focus = await page.evaluate(_FOCUS)
        assert focus["index"] == expected, f"{page.url}: tab stop {expected} expected, got {focus}"
        assert focus["ring"] and focus["onScreen"], f"{page.url}: focus not visible: {focus}"


async def _skip_link_jumps_to_content(page: Page) -> None:
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
    assert (await page.evaluate(_FOCUS))["onScreen"]  # it appears when focused
    await page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.getElementById('main').contains(document.activeElement)")


async def test_the_admin_pages_are_labelled_and_keyboard_navigable(
    watched: Watched, api: httpx.AsyncClient, super_admin: str
) -> None:
    await create_tenant(api, "globex")  # the tenant pages test has "acme"
    page = await watched.page()
    await _check(page, "/admin/ui/", "admin-sign-in")
    assert await page.evaluate("document.activeElement.id") == "f-email"  # autofocus
    await _tabs_in_order(page)  # email -> password -> Sign in
    await sign_in(page, "/admin/ui/", super_admin, USER_PASSWORD)
    for path, shot in [
        ("/admin/ui/", "admin-overview"),
        ("/admin/ui/tenants/globex", None),  # its screenshot, with usage drawn: test_admin_browser
        ("/admin/ui/fleet", "admin-fleet"),
        ("/admin/ui/alerts", "admin-alerts"),
        ("/admin/ui/tenants", "admin-tenants"),
    ]:
        await _check(page, path, shot)
    await _skip_link_jumps_to_content(page)
    await page.goto("/admin/ui/tenants")
    await _tabs_in_order(page)


async def test_the_tenant_pages_are_labelled_and_keyboard_navigable(watched: Watched, api: httpx.AsyncClient) -> None:
    acme = await create_tenant(api, "acme")
    created = await api.post(acme.api("/cards"), json={"cardnumber": "ACME-9", "year": 1991}, headers=acme.auth)
    assert created.status_code == 201, created.text
    page = await watched.page()
    await _check(page, "/workspaces", "workspaces")
    await _check(page, "/t/acme/sign-in", "tenant-sign-in")
    await _tabs_in_order(page)
    await sign_in(page, "/t/acme/sign-in", acme.admin_email, acme.admin_password)
    for path, shot in [
        ("/t/acme/cards", None),
        ("/t/acme/cards/new", None),
        (f"/t/acme/cards/{created.json()['id']}", None),
        ("/t/acme/players", "tenant-players"),
        ("/t/acme/teams", "tenant-teams"),
        ("/t/acme/manufacturers", "tenant-manufacturers"),
        ("/t/acme/users", "tenant-users"),
        ("/t/acme/usage", "tenant-usage"),
        ("/t/acme/billing", "tenant-billing"),
        ("/t/acme/data", "tenant-data"),
    ]:
        await _check(page, path, shot)
    for path in ("/t/acme/cards", "/t/acme/cards/new"):
        await page.goto(path)
        await _skip_link_jumps_to_content(page)
        await page.goto(path)
        await _tabs_in_order(page)
