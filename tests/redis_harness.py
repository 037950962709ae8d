"""A Redis server for the tests: ``CARDVAULT_TEST_REDIS_URL`` when set, else a private throwaway ``redis-server``.

The private server listens on 127.0.0.1 on a free port, persists nothing (``--save '' --appendonly no``),
runs in its own temporary directory and is killed when the session ends: by the fixture's finalizer, by an
``atexit`` hook as a safety net, and by the kernel (``PR_SET_PDEATHSIG``) if pytest itself is SIGKILLed.
There is no skip: a missing ``redis-server`` is a failure telling you what to install.

The ``redis_url`` fixture is defined in ``tests/integration/conftest.py`` on top of :func:`redis_server`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.processes import die_with_parent, free_port, stop, track

TEST_URL_ENV = "CARDVAULT_TEST_REDIS_URL"


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
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    track(proc)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        _wait_for_ping(url, proc, log, time.monotonic() + timeout)
        yield url
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
