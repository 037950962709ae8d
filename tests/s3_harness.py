"""pytest plugin: a real S3-compatible server for the session: ``moto_server`` (moto in server mode) as a
process on 127.0.0.1, on a free port, spoken to over HTTP by the real boto3 client like any S3 endpoint.

Fixtures:

- ``s3_server`` (session): the running :class:`S3Server` (``.endpoint``, ``.client()`` for inspection). It
  is killed when the session ends, and by the kernel if pytest dies (``PR_SET_PDEATHSIG``).
- ``s3_bucket`` (function): a new, empty bucket of its own for the test.
- ``s3_settings`` (function): ``settings`` with ``CARDVAULT_BACKUP_S3_*`` pointing at that bucket (prefix
  ``cv``), so ``Platform.objects`` is an ``S3ObjectStore``; ``s3_env`` is the same as environment variables
  for the ``cardvault`` subprocesses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from controlplane.settings import Settings
from tests.processes import die_with_parent, free_port, stop, track

ACCESS_KEY = "cardvault-test"
SECRET_KEY = "cardvault-test-secret"
REGION = "us-east-1"
PREFIX = "cv"


class S3Server:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._client: Any = None

    def client(self) -> Any:
        """A plain boto3 client of the server (made once: making one costs ~0.2 s)."""
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
        return self._client


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    moto_server = str(Path(sys.executable).parent / "moto_server")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [moto_server, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent,
        )
    track(proc)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"moto_server exited: {log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code < 500:
                    break
            assert time.monotonic() < deadline, f"moto_server did not answer: {log.read_text()}"
            time.sleep(0.05)
        yield S3Server(endpoint)
    finally:
        stop(proc)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    name = f"cv-test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(settings: Settings, s3_server: S3Server, s3_bucket: str) -> Settings:
    backups = dataclasses.replace(
        settings.backups,
        s3_bucket=s3_bucket,
        s3_endpoint=s3_server.endpoint,
        s3_region=REGION,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
        s3_prefix=PREFIX,
    )
    return settings.replace(backups=backups)


@pytest.fixture
def s3_env(s3_server: S3Server, s3_bucket: str) -> dict[str, str]:
    """``CARDVAULT_BACKUP_S3_*`` for a ``cardvault`` subprocess, pointing at the test's bucket."""
    return {
        "CARDVAULT_BACKUP_S3_BUCKET": s3_bucket,
        "CARDVAULT_BACKUP_S3_ENDPOINT": s3_server.endpoint,
        "CARDVAULT_BACKUP_S3_REGION": REGION,
        "CARDVAULT_BACKUP_S3_ACCESS_KEY": ACCESS_KEY,
        "CARDVAULT_BACKUP_S3_SECRET_KEY": SECRET_KEY,
        "CARDVAULT_BACKUP_S3_PREFIX": PREFIX,
    }
