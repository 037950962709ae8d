"""Failpoints: parsing the spec and what each action does at the named point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from controlplane.errors import ConfigError
from controlplane.failpoints import FailpointError, Failpoints


def test_no_spec_means_no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a spec no point raises, kills or hangs (the module's ``os.kill`` and ``time.sleep`` record
    instead of acting)."""
    acted: list[str] = []
    monkeypatch.setattr(
        "controlplane.failpoints.os", SimpleNamespace(getpid=os.getpid, kill=lambda *_: acted.append("kill"))
    )
    monkeypatch.setattr("controlplane.failpoints.time", SimpleNamespace(sleep=lambda _: acted.append("sleep")))
    for spec in ("", " , ,"):
        points = Failpoints(spec)
        for point in ("before:template", "after:create_database", "anything"):
            points.hit(point)
    assert acted == []
    with pytest.raises(FailpointError):  # the same point does fire once it is named
        Failpoints("after:create_database=raise").hit("after:create_database")


def test_raise_fires_only_at_its_point() -> None:
    points = Failpoints("after:create_database=raise")
    points.hit("before:create_database")
    points.hit("after:create_role")
    with pytest.raises(FailpointError, match="failpoint after:create_database"):
        points.hit("after:create_database")
    with pytest.raises(FailpointError):  # every time, not once
        points.hit("after:create_database")


def test_several_points_with_spaces_and_empty_items() -> None:
    points = Failpoints(" before:activate=raise , ,after:drop_role=raise,")
    for point in ("before:activate", "after:drop_role"):
        with pytest.raises(FailpointError):
            points.hit(point)
    points.hit("after:activate")


def test_a_failpoint_error_is_not_a_domain_error() -> None:
    """Callers must treat it like any unexpected failure (the services wrap it in OperationFailed)."""
    from controlplane.errors import CardVaultError

    assert not issubclass(FailpointError, CardVaultError)


@pytest.mark.parametrize("spec", ["after:x", "after:x=", "=raise", "after:x=explode", "after:x=RAISE", "a=raise,b"])
def test_bad_specs_are_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="bad failpoint"):
        Failpoints(spec)


def test_kill_sends_sigkill_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    fake_os = SimpleNamespace(getpid=os.getpid, kill=lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr("controlplane.failpoints.os", fake_os)  # only the module's name, not os itself
    Failpoints("before:forget=kill").hit("before:forget")
    assert sent == [(os.getpid(), signal.SIGKILL)]


class _Woken(Exception):
    pass


def test_hang_sleeps_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise _Woken  # it would have gone on sleeping

    monkeypatch.setattr("controlplane.failpoints.time", SimpleNamespace(sleep=sleep))
    with pytest.raises(_Woken):
        Failpoints("after:template=hang").hit("after:template")
    assert len(naps) == 3 and all(n > 0 for n in naps)


def test_kill_really_kills_the_process() -> None:
    script = textwrap.dedent(
        """
        from controlplane.failpoints import Failpoints
        points = Failpoints("after:create_role=kill")
        points.hit("before:create_role")
        print("before", flush=True)
        points.hit("after:create_role")
        print("survived", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "before\n"
