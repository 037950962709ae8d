"""HTTP face of file delivery for CDNs: signed links to card images, and the objects they name.

- ``GET /cards/{card_id}/image/link`` (tenant API, ``cards:read``): ``{url, expires_at}``, a signed link to
  the card's current image (``controlplane.storage.delivery``: no bearer needed, valid at least a day,
  the same URL for an hour).
- ``GET /t/{slug}/files/{key}?expires=&sig=`` (public): the object, if the signature is the platform's
  for this tenant, key and expiry and the link has not expired, and the tenant still has a ``files`` row
  for it. ``ETag`` is its SHA-256, ``If-None-Match`` is answered 304 (no body, not counted as bytes
  served), ``Cache-Control: public, max-age=<until expiry>, immutable``. A forged, altered or expired
  link, another tenant's key, or a file that is gone: 404 ``file_link_invalid``, nothing served; a
  suspended or deleted tenant answers as on its API (423, 410).

Every body sent counts as bytes served for the tenant (``usage.bytes_served.BytesServed``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, QueryParameter

from controlplane.auth.models import Permission
from controlplane.cards import repository as cards
from controlplane.cards.errors import ImageMissing, RowNotFound
from controlplane.context import TenantRequest
from controlplane.http.state import (
    BYTES_SERVED_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
    TENANT_SLUG_PARAM,
)
from controlplane.http.tenant_api import requires
from controlplane.hygiene import tenant_repository
from controlplane.paging import MAX_ID
from controlplane.pools.service import TenantPools
from controlplane.routing.resolver import resolve
from controlplane.settings import Settings
from controlplane.storage import InvalidStorageKey, Storage, validate_key
from controlplane.storage.delivery import FileLinkInvalid, FileLinks, etag, not_modified, public_cache_control
from controlplane.storage.local import LocalStorage
from controlplane.usage.bytes_served import BytesServed

IfNoneMatch = Annotated[str | None, HeaderParameter(name="if-none-match", max_length=8192)]


class ImageLink(msgspec.Struct, kw_only=True):
    """A signed link to a card's image: fetch ``url`` without credentials until ``expires_at``."""

    url: str
    expires_at: datetime


def delivery_dependencies(settings: Settings) -> dict[str, Provide]:
    """``file_links`` (signs and checks links with the secret key) and ``file_storage``."""
    links = FileLinks(settings.security.secret_key, settings.security.previous_secret_keys)
    storage: Storage = LocalStorage(settings.data_dir / "storage")
    base_url = settings.http.base_url

    def provide_links() -> FileLinks:
        return links

    def provide_storage() -> Storage:
        return storage

    def provide_base_url() -> str:
        return base_url

    return {
        "file_links": Provide(provide_links, use_cache=True, sync_to_thread=False),
        "file_storage": Provide(provide_storage, use_cache=True, sync_to_thread=False),
        "public_base_url": Provide(provide_base_url, use_cache=True, sync_to_thread=False),
    }


@get(
    "/cards/{card_id:int}/image/link",
    opt=requires(Permission.CARDS_READ),
    tags=["cards"],
    summary="A signed link to the card's image (no credentials needed; for <img> tags and CDNs)",
)
async def image_link(
    tenant_request: NamedDependency[TenantRequest],
    file_links: NamedDependency[FileLinks],
    public_base_url: NamedDependency[str],
    card_id: FromPath[int],
) -> ImageLink:
    ctx = tenant_request
    row = await cards.card_image(ctx.conn, card_id) if 1 <= card_id <= MAX_ID else None
    if row is None:
        if 1 <= card_id <= MAX_ID and await cards.get(ctx.conn, cards.CARDS, card_id) is not None:
            raise RowNotFound(f"card {card_id} has no image", resource="image", id=card_id)
        raise RowNotFound(f"no card with id {card_id}", resource="card", id=card_id)
    link = file_links.link(ctx.tenant.id, ctx.tenant.slug, row["key"])
    return ImageLink(url=public_base_url + link.path, expires_at=datetime.fromtimestamp(link.expires, UTC))


@get(
    f"/t/{{{TENANT_SLUG_PARAM}:str}}/files/{{key:str}}",
    tags=["files"],
    summary="A stored file through a signed link (public; see GET /cards/{id}/image/link)",
    media_type="application/octet-stream",
    security=[],
    response_headers=[
        ResponseHeader(name="ETag", documentation_only=True, description="sha256 of the file"),
        ResponseHeader(name="Cache-Control", documentation_only=True, description="public until the link expires"),
    ],
)
async def signed_file(
    request: Request[Any, Any, Any],
    tenant_slug: FromPath[str],
    key: FromPath[str],
    file_links: NamedDependency[FileLinks],
    file_storage: NamedDependency[Storage],
    expires: Annotated[int | None, QueryParameter(ge=0, le=2**40)] = None,
    sig: Annotated[str | None, QueryParameter(max_length=200)] = None,
    if_none_match: IfNoneMatch = None,
) -> Response[bytes]:
    state = request.app.state
    tenant = await resolve(state[TENANT_CACHE_STATE_KEY], tenant_slug)
    if expires is None or sig is None:
        raise FileLinkInvalid("a file link needs its expires and sig parameters")
    file_links.verify(tenant.id, key, expires, sig)
    try:
        validate_key(tenant.id, key)
    except InvalidStorageKey:  # never signed by us; checked all the same before any lookup
        raise FileLinkInvalid("this file link is not valid") from None
    pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
    async with pools.connection(tenant.id, autocommit=True) as conn:
        row = await tenant_repository.file_by_key(conn, key)
    if row is None:
        raise FileLinkInvalid("the file this link names is gone")
    headers = {
        "ETag": etag(row["sha256"]),
        "Cache-Control": public_cache_control(expires, file_links.now()),
        "X-Content-Type-Options": "nosniff",
    }
    if not_modified(if_none_match, headers["ETag"]):
        return Response(b"", status_code=304, headers=headers)
    data = await file_storage.get(tenant.id, key)
    if data is None:
        raise ImageMissing("the file is recorded but its stored object is missing")
    served: BytesServed | None = state.get(BYTES_SERVED_STATE_KEY)
    if served is not None:
        served.count(tenant.id, tenant.slug, len(data))
    return Response(data, media_type=row["content_type"], headers=headers)


#: Mounted with the tenant API (``/t/{slug}/api`` and ``/api``).
TENANT_DELIVERY_HANDLERS = [image_link]
#: Mounted at the top level, outside the tenant API's authentication.
PUBLIC_DELIVERY_HANDLERS = [signed_file]
