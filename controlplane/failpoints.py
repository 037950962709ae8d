"""Failpoints: named places in multi-step operations where a test can make the process fail.

``CARDVAULT_FAILPOINTS="after:create_database=kill,before:activate=raise"`` makes the process kill
itself (SIGKILL, as a crash would) or raise ``FailpointError`` at those places. Empty in production;
the lifecycle fault tests use them to prove the reconciler converges from every step.
"""

from __future__ import annotations

import os
import signal
import time

from controlplane.errors import ConfigError

ACTIONS = ("raise", "kill", "hang")


class FailpointError(RuntimeError):
    """Raised at a failpoint set to ``raise``."""


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        self._actions: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, action = item.partition("=")
            if action not in ACTIONS or not point:
                raise ConfigError(f"bad failpoint {item!r}: use POINT=raise|kill|hang")
            self._actions[point] = action

    def hit(self, point: str) -> None:
        action = self._actions.get(point)
        if action == "raise":
            raise FailpointError(f"failpoint {point}")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang":
            while True:
                time.sleep(3600)
