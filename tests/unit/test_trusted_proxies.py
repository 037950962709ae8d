"""``CARDVAULT_TRUSTED_PROXIES``: whose ``X-Forwarded-For`` ``cardvault serve`` believes (default: nobody's)."""

from __future__ import annotations

import pytest

from controlplane.errors import ConfigError
from controlplane.settings import Settings


def proxies(value: str | None) -> tuple[str, ...]:
    env = {} if value is None else {"CARDVAULT_TRUSTED_PROXIES": value}
    return Settings.from_env(env).http.trusted_proxies


def test_nobody_is_trusted_by_default() -> None:
    assert proxies(None) == proxies("") == proxies(" , ") == ()
    assert Settings().http.trusted_proxies == ()


def test_addresses_and_networks_are_normalised() -> None:
    assert proxies(" 10.0.0.5, 10.1.2.3/8 ,::1, fd00::/8") == ("10.0.0.5", "10.0.0.0/8", "::1", "fd00::/8")


def test_a_star_trusts_every_peer() -> None:
    assert proxies("10.0.0.5, *") == ("*",)


@pytest.mark.parametrize("value", ["localhost", "10.0.0.300", "10.0.0.0/33", "10.0.0.5;rm"])
def test_anything_else_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="CARDVAULT_TRUSTED_PROXIES"):
        proxies(value)
