"""The OpenAPI document's configuration (served at ``/schema``): title, version and the bearer scheme."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme


def openapi_config() -> OpenAPIConfig:
    """A fresh configuration per app (Litestar keeps state on it)."""
    return OpenAPIConfig(
        title="CardVault control plane",
        version="0.1.0",
        path="/schema",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description="An access JWT from POST /auth/token (platform) or /t/{slug}/auth/token "
                    "(tenant), a tenant API key (cvk_...), or CARDVAULT_ADMIN_TOKEN for /admin/*",
                )
            }
        ),
    )
