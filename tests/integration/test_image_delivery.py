"""Card images for browsers and CDNs: entity tags, 304s, cache policies, signed links, bytes served.

The authenticated ``GET /cards/{id}/image`` carries the SHA-256 ``ETag``, answers ``If-None-Match`` with a
bodiless 304 and says ``private, max-age=60``. ``GET /cards/{id}/image/link`` gives a signed link that
serves the object without a bearer, ``public`` and ``immutable`` until it expires. A forged, altered,
expired or incomplete link, or one for another tenant, serves nothing (404 ``file_link_invalid``). Bytes
sent (never a 304's) count per tenant, are flushed to the registry (``tenant_bytes_served``, the
``bytes_served`` history, the admin usage view) and exported to Prometheus per tenant.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.http.state import BYTES_SERVED_STATE_KEY
from controlplane.metrics.service import CardVaultMetrics
from controlplane.platform import Platform
from controlplane.storage.delivery import FileLinkInvalid, FileLinks, not_modified, public_cache_control
from controlplane.usage.bytes_served import BytesServed
from tests.conftest import SECRET_KEY
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.hygiene_support import control_rows, png

Client = AsyncTestClient[Any]
A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


# -- the rules, without a server ------------------------------------------------------------------------


def test_if_none_match_compares_weakly() -> None:
    tag = '"abc"'
    for header in ('"abc"', 'W/"abc"', '"x", "abc"', "*", ' "zzz" ,W/"abc"'):
        assert not_modified(header, tag), header
    for header in (None, "", '"abcd"', "abc", '"ABC"'):
        assert not not_modified(header, tag), header


def test_links_are_signed_for_one_tenant_key_and_expiry() -> None:
    now = 1_700_000_123.0
    links = FileLinks(SECRET_KEY, clock=lambda: now)
    link = links.link(A, "acme", "k.png")
    query = parse_qs(urlsplit(link.path).query)
    expires, sig = int(query["expires"][0]), query["sig"][0]
    assert urlsplit(link.path).path == "/t/acme/files/k.png" and expires == link.expires
    assert expires % 3600 == 0 and now + 86400 <= expires < now + 86400 + 3600
    assert links.link(A, "acme", "k.png") == link, "the same URL within the hour: one CDN copy"
    links.verify(A, "k.png", expires, sig)
    for tenant, key, when, signature in (
        (B, "k.png", expires, sig),  # another tenant
        (A, "j.png", expires, sig),  # another object
        (A, "k.png", expires + 3600, sig),  # a longer life
        (A, "k.png", expires, sig[:-1] + ("A" if sig[-1] != "A" else "B")),  # altered
        (A, "k.png", expires, ""),
    ):
        with pytest.raises(FileLinkInvalid):
            links.verify(tenant, key, when, signature)
    with pytest.raises(FileLinkInvalid, match="expired"):
        FileLinks(SECRET_KEY, clock=lambda: expires + 1.0).verify(A, "k.png", expires, sig)
    with pytest.raises(FileLinkInvalid):
        FileLinks("another secret key of at least 32 characters", clock=lambda: now).verify(A, "k.png", expires, sig)
    rotated = FileLinks("the new secret key, at least 32 characters", (SECRET_KEY,), clock=lambda: now)
    rotated.verify(A, "k.png", expires, sig)  # still valid after a key rotation, until it expires
    assert public_cache_control(expires, now) == f"public, max-age={expires - int(now)}, immutable"


def test_the_meter_publishes_per_tenant_totals_for_metrics_only_when_they_change() -> None:
    meter = BytesServed()
    meter.count(A, "acme", 100)
    meter.count(A, "acme", 50)
    meter.count(B, "globex", 7)
    assert meter.published == {} and meter.pending() == {A: (150, 2), B: (7, 1)}
    meter.publish()
    first = meter.published
    assert first == {"acme": 150, "globex": 7}
    meter.publish()
    assert meter.published is first, "nothing new: the same mapping, so /metrics reuses its text"

    metrics = CardVaultMetrics(per_table=False)  # a very large fleet: the total only
    metrics.bind(served=meter)
    text = metrics.render().decode()
    assert "cardvault_image_bytes_served_total 157.0" in text and "cardvault_tenant_image" not in text
    metrics = CardVaultMetrics()
    metrics.bind(served=meter)
    assert 'cardvault_tenant_image_bytes_served_total{tenant="acme"} 150.0' in metrics.render().decode()
    cached = metrics.cached_text()
    assert cached is not None and b'tenant="acme"} 150.0' in cached
    meter.count(A, "acme", 1)
    meter.publish()
    assert metrics.cached_text() is None  # a new publication is rendered anew
    assert 'tenant="acme"} 151.0' in metrics.render().decode()


# -- over HTTP -----------------------------------------------------------------------------------------


async def card_with_image(client: Client, t: TenantAdmin, data: bytes) -> int:
    card = await client.post(t.api("/cards"), json={"cardnumber": "1"}, headers=t.auth)
    assert card.status_code == 201, card.text
    put = await client.put(
        t.api(f"/cards/{card.json()['id']}/image"), content=data, headers={**t.auth, "content-type": "image/png"}
    )
    assert put.status_code == 200, put.text
    return int(card.json()["id"])


async def signed_path(client: Client, t: TenantAdmin, card_id: int) -> str:
    response = await client.get(t.api(f"/cards/{card_id}/image/link"), headers=t.auth)
    assert response.status_code == 200, response.text
    url = urlsplit(response.json()["url"])
    expires_at = datetime.fromisoformat(response.json()["expires_at"]).timestamp()
    assert int(parse_qs(url.query)["expires"][0]) == expires_at
    return f"{url.path}?{url.query}"


def anonymous(client: Client) -> None:
    client.headers.pop("Authorization", None)


async def test_the_authenticated_image_has_an_etag_a_304_and_a_private_policy(client: Client) -> None:
    t = await create_tenant(client, "acme")
    data = png()
    card_id = await card_with_image(client, t, data)
    image = await client.get(t.api(f"/cards/{card_id}/image"), headers=t.auth)
    assert image.status_code == 200 and image.content == data
    tag = image.headers["etag"]
    assert image.headers["cache-control"] == "private, max-age=60"

    for header in (tag, f"W/{tag}", f'"nope", {tag}'):
        again = await client.get(t.api(f"/cards/{card_id}/image"), headers={**t.auth, "if-none-match": header})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    changed = await client.get(t.api(f"/cards/{card_id}/image"), headers={**t.auth, "if-none-match": '"old"'})
    assert changed.status_code == 200 and changed.content == data


async def test_a_signed_link_serves_the_object_without_a_bearer(client: Client) -> None:
    t = await create_tenant(client, "acme")
    data = png()
    card_id = await card_with_image(client, t, data)
    path = await signed_path(client, t, card_id)
    anonymous(client)

    response = await client.get(path)
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "image/png"
    max_age = int(response.headers["cache-control"].split("max-age=")[1].split(",")[0])
    assert response.headers["cache-control"].startswith("public, ") and response.headers["cache-control"].endswith(
        ", immutable"
    )
    assert 86400 - 60 <= max_age <= 86400 + 3600
    again = await client.get(path, headers={"if-none-match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    no_link = await client.get(t.api(f"/cards/{card_id}/image/link"))  # the link itself needs a credential
    assert no_link.status_code == 401


async def test_forged_expired_or_foreign_links_serve_nothing(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    globex = await create_tenant(client, "globex")
    data = png()
    card_id = await card_with_image(client, acme, data)
    path = await signed_path(client, acme, card_id)
    url = urlsplit(path)
    query = parse_qs(url.query)
    key, expires, sig = url.path.rsplit("/", 1)[1], int(query["expires"][0]), query["sig"][0]
    foreign = await client.get(acme.api(f"/cards/{card_id}/image/link"), headers=globex.auth)
    assert foreign.status_code == 403, "another tenant's admin gets no link to acme's image"
    expired = FileLinks(SECRET_KEY, clock=lambda: time.time() - 3 * 86400).link(acme.id, "acme", key)
    signed_for_globex = FileLinks(SECRET_KEY).link(globex.id, "globex", key)  # a real signature, no such row
    anonymous(client)

    for attempt in (
        f"/t/acme/files/{key}?expires={expires}&sig={sig[:-2]}xx",  # forged signature
        f"/t/acme/files/{key}?expires={expires + 3600}&sig={sig}",  # longer life
        f"/t/acme/files/{key}",  # no signature
        f"/t/acme/files/{key}?expires={expires}",
        f"/t/globex/files/{key}?expires={expires}&sig={sig}",  # acme's link sent to globex
        signed_for_globex.path,  # globex may sign only what globex has
        expired.path,
    ):
        response = await client.get(attempt)
        assert response.status_code == 404, (attempt, response.text)
        assert response.json()["error"] == "file_link_invalid" and data not in response.content
        assert response.headers["cache-control"] == "no-store"
    assert (await client.get(f"/t/nobody/files/{key}?expires={expires}&sig={sig}")).status_code == 404

    client.headers["Authorization"] = f"Bearer {platform.settings.security.admin_token}"
    assert (await client.post("/admin/tenants/acme/suspend")).status_code == 200
    assert (await client.get(path)).status_code == 423, "a suspended tenant serves nothing, links included"


async def test_bytes_served_are_counted_per_tenant_and_flushed(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    globex = await create_tenant(client, "globex")
    big, small = png(4000), png(1000)
    acme_card = await card_with_image(client, acme, big)
    globex_card = await card_with_image(client, globex, small)
    path = await signed_path(client, acme, acme_card)
    image = await client.get(acme.api(f"/cards/{acme_card}/image"), headers=acme.auth)
    not_modified_ = await client.get(
        acme.api(f"/cards/{acme_card}/image"), headers={**acme.auth, "if-none-match": image.headers["etag"]}
    )
    assert not_modified_.status_code == 304
    assert (await client.get(path)).status_code == 200
    assert (await client.get(globex.api(f"/cards/{globex_card}/image"), headers=globex.auth)).status_code == 200

    meter: BytesServed = client.app.state[BYTES_SERVED_STATE_KEY]
    assert meter.pending() == {acme.id: (2 * len(big), 2), globex.id: (len(small), 1)}, "the 304 sent nothing"
    async with platform.control.connection() as conn:
        assert await meter.flush(conn) == 2
    assert meter.pending() == {}
    rows = await control_rows(platform, "SELECT tenant_id, bytes, requests FROM tenant_bytes_served")
    assert {r["tenant_id"]: (r["bytes"], r["requests"]) for r in rows} == {
        acme.id: (2 * len(big), 2),
        globex.id: (len(small), 1),
    }
    points = await control_rows(
        platform, "SELECT tenant_id, metric_value FROM tenant_usage_metrics WHERE metric_name = 'bytes_served'"
    )
    assert {p["tenant_id"]: p["metric_value"] for p in points} == {acme.id: 2 * len(big), globex.id: len(small)}

    # More traffic: the total follows at once, the history point (at most one per 5 minutes) waits.
    assert (await client.get(acme.api(f"/cards/{acme_card}/image"), headers=acme.auth)).status_code == 200
    async with platform.control.connection() as conn:
        await meter.flush(conn)
    usage = (await client.get("/admin/tenants/acme/usage")).json()["bytes_served"]
    assert usage == {"total": 3 * len(big), "requests": 3, "in_window": 3 * len(big)}
    assert (
        len(await control_rows(platform, "SELECT 1 FROM tenant_usage_metrics WHERE metric_name = 'bytes_served'")) == 2
    )

    metrics = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for s in family.samples
    }
    assert metrics[("cardvault_tenant_image_bytes_served_total", (("tenant", "acme"),))] == 3 * len(big)
    assert metrics[("cardvault_tenant_image_bytes_served_total", (("tenant", "globex"),))] == len(small)
    assert metrics[("cardvault_image_bytes_served_total", ())] == 3 * len(big) + len(small)
