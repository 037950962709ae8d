"""What the test harnesses that start servers share: free loopback ports, child processes that die with the
test run (``PR_SET_PDEATHSIG``), and their clean stop (also at exit, for any left running)."""

from __future__ import annotations

import atexit
import ctypes
import signal
import socket
import subprocess
import sys

_started: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """``preexec_fn`` of a child: SIGTERM when this process dies (runs between fork and exec)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Remember ``proc`` so that it is stopped at exit if nothing stopped it before."""
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` (kill it after 5 s) and forget it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _started:
        _started.remove(proc)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_started):
        stop(proc)
