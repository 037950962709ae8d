"""What the SSO API takes and returns; the client secret goes in (``SsoConfigUpdate``) and never out."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

Domain = Annotated[str, msgspec.Meta(min_length=3, max_length=253, pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")]
Issuer = Annotated[str, msgspec.Meta(min_length=8, max_length=500, pattern=r"^https?://[^\s\x00?#]+$")]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^[^\s\x00]+$")]
ClientSecret = Annotated[str, msgspec.Meta(min_length=1, max_length=2000, pattern=r"^[^\x00]+$")]
RoleName = Literal["tenant_admin", "collection_manager", "user"]


class SsoConfigUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    issuer: Issuer
    client_id: ClientId
    #: Required when SSO is first set; omitted later, the stored secret stays.
    client_secret: ClientSecret | None = None
    allowed_domains: Annotated[list[Domain], msgspec.Meta(min_length=1, max_length=20)]
    default_role: RoleName = "user"
    password_login: bool = True


class SsoConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's SSO settings as the APIs show them (``client_secret_set``: never the secret)."""

    issuer: str
    client_id: str
    client_secret_set: bool
    allowed_domains: list[str]
    default_role: str
    password_login: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class SsoProvider(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's SSO settings as the sign-in flow needs them (the secret decrypted)."""

    issuer: str
    client_id: str
    client_secret: str
    allowed_domains: list[str]
    default_role: str
