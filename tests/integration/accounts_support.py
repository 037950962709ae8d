"""Helpers of the accounts API tests."""

from __future__ import annotations

from typing import Any

SECRET_FIELDS = {"password", "password_hash", "invite_hash", "key_hash", "refresh_hash"}


def no_secrets(body: Any) -> None:
    """No hash or password anywhere in a response body."""
    if isinstance(body, dict):
        assert not SECRET_FIELDS & body.keys(), body
        for value in body.values():
            no_secrets(value)
    elif isinstance(body, list):
        for value in body:
            no_secrets(value)


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert body["detail"], body
    return body
