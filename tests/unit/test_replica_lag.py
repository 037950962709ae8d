"""The replica monitor's arithmetic: WAL positions as PostgreSQL writes them, and lag in seconds from the
primary's samples (an upper bound; unknown when the replica is behind every sample kept)."""

from __future__ import annotations

import math

import pytest

from controlplane.routing.replica_monitor import PrimarySamples, format_lsn, parse_lsn


@pytest.mark.parametrize("text", ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_lsn_text_round_trips(text: str) -> None:
    assert format_lsn(parse_lsn(text)) == text


def test_lsn_order_is_numeric() -> None:
    assert parse_lsn("0/FFFFFFFF") < parse_lsn("1/0") < parse_lsn("1/10")


@pytest.mark.parametrize("text", ["", "x", "16", "16/", "/1", "1/2/3", "G/1", "123456789/0", "-1/0", "+1/0", "0x1/0"])
def test_malformed_lsns_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(text)


def test_lag_is_the_age_of_the_newest_sample_replayed() -> None:
    server = PrimarySamples()
    for at, lsn in ((10.0, 100), (11.0, 200), (12.0, 300)):
        server.samples.append((at, lsn))
    assert server.lag_seconds(300, now=12.2) == pytest.approx(0.2)  # caught up with the last sample
    assert server.lag_seconds(250, now=12.2) == pytest.approx(1.2)  # has what the primary had at 11.0
    assert server.lag_seconds(100, now=12.2) == pytest.approx(2.2)
    assert server.lag_seconds(99, now=12.2) == math.inf  # behind everything known: no bound at all
    assert PrimarySamples().lag_seconds(0, now=1.0) == math.inf
