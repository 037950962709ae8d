"""pytest plugin: a real OpenID Connect provider (``oidc-provider-mock``, a Flask app built on authlib) on a
free 127.0.0.1 port, for the enterprise SSO tests.

Fixture ``oidc_provider`` (session): an :class:`OidcProvider`: ``.issuer``, ``.set_user(sub, claims)``,
``.approve(location, sub)`` (submit the provider's sign-in form for the authorization URL ``location`` and
return the redirect back to us), and ``.private_jwk()`` (the provider's signing key, to forge tokens that a
verifier must still refuse for what they say).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import flask
import httpx
import pytest
import werkzeug.serving

from tests.processes import free_port


class OidcProvider:
    def __init__(self, app: flask.Flask, port: int) -> None:
        self.app = app
        self.issuer = f"http://127.0.0.1:{port}"

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        response = httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10)
        assert response.status_code == 204, response.text

    def approve(self, location: str, sub: str) -> str:
        """POST the provider's sign-in form for ``location`` as ``sub``: the redirect URI with code and state."""
        assert location.startswith(f"{self.issuer}/oauth2/authorize?"), location
        response = httpx.post(location, data={"sub": sub}, timeout=10)
        assert response.status_code == 302, response.text
        return response.headers["location"]

    def private_jwk(self) -> dict[str, Any]:
        with self.app.test_request_context("/"):
            self.app.preprocess_request()  # sets flask.g's storage, as for a request
            key: dict[str, Any] = flask.g.oidc_provider_mock_storage.jwk.as_dict(is_private=True)
        return key


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    with warnings.catch_warnings():  # it still imports authlib's deprecated ``authlib.jose`` and httpx client
        warnings.simplefilter("ignore", DeprecationWarning)
        import oidc_provider_mock

    app = oidc_provider_mock.app()
    port = free_port()
    server = werkzeug.serving.make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield OidcProvider(app, port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def callback_path(redirect: str) -> str:
    """The path and query of the provider's redirect back to us (for the test client)."""
    parts = urlsplit(redirect)
    return f"{parts.path}?{parts.query}"
