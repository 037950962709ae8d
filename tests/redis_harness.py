"""A Redis server for the tests: ``CARDVAULT_TEST_REDIS_URL`` when set, else a private throwaway ``redis-server``.

The private server listens on 127.0.0.1 on a free port, persists nothing (``--save '' --appendonly no``),
runs in its own temporary directory and is killed when the session ends: by the fixture's finalizer, by an
``atexit`` hook as a safety net, and by the kernel (``PR_SET_PDEATHSIG``) if pytest itself is SIGKILLed.
There is no skip: a missing ``redis-server`` is a failure telling you what to install.

The ``redis_url`` fixture is defined in ``tests/integration/conftest.py`` on top of :func:`redis_server`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

TEST_URL_ENV = "CARDVAULT_TEST_REDIS_URL"
_started: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@atexit.register
def _stop_leftovers() -> None:
    for proc in _started:
        _stop(proc)


def _wait_for_ping(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING in time:\n{log.read_text()}") from None
                time.sleep(0.05)
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(timeout: float = 15.0) -> Iterator[str]:
    """Yield the URL of a Redis server for the tests (see the module docstring); stop it afterwards."""
    if url := os.environ.get(TEST_URL_ENV):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server not found on PATH: install the Debian package redis-server "
            f"(apt-get install redis-server) or set {TEST_URL_ENV} to a Redis the tests may use"
        )
    workdir = Path(tempfile.mkdtemp(prefix="cardvault-test-redis-"))
    log = workdir / "redis.log"
    port = free_port()
    args = [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--daemonize", "no", "--dir", str(workdir), "--logfile", str(log)]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    _started.append(proc)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        _wait_for_ping(url, proc, log, time.monotonic() + timeout)
        yield url
    finally:
        _stop(proc)
        _started.remove(proc)
        shutil.rmtree(workdir, ignore_errors=True)
