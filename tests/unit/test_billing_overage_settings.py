"""``CARDVAULT_OVERAGE_CEILING``: how far a paying tenant may go past its plan (1.0: hard limits)."""

from __future__ import annotations

import pytest

from controlplane.errors import ConfigError
from controlplane.settings import Settings

STRIPE = {
    "CARDVAULT_BILLING": "stripe",
    "CARDVAULT_STRIPE_API_KEY": "sk_test_x",
    "CARDVAULT_STRIPE_WEBHOOK_SECRET": "whsec_x",
}


def test_default_is_twice_the_plan_and_only_with_billing_on() -> None:
    assert Settings.from_env(STRIPE).billing.overage_ceiling == 2.0
    assert Settings.from_env(STRIPE).billing.quota_ceiling == 2.0
    off = Settings.from_env({"CARDVAULT_OVERAGE_CEILING": "3"}).billing
    assert (off.overage_ceiling, off.quota_ceiling) == (3.0, 1.0)  # billing none: nothing is billed, limits hard


def test_one_turns_overage_off() -> None:
    assert Settings.from_env(STRIPE | {"CARDVAULT_OVERAGE_CEILING": "1.0"}).billing.quota_ceiling == 1.0
    assert Settings.from_env(STRIPE | {"CARDVAULT_OVERAGE_CEILING": " 1.5 "}).billing.quota_ceiling == 1.5


@pytest.mark.parametrize("raw", ["0.5", "0", "-2", "101", "nan", "inf", "twice"])
def test_a_ceiling_below_one_or_not_a_number_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="CARDVAULT_OVERAGE_CEILING"):
        Settings.from_env(STRIPE | {"CARDVAULT_OVERAGE_CEILING": raw})
