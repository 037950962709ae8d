"""Backups use ``pg_dump`` of the server's major version only: a client of another major version, found
first, is passed over, and none of the right version is a ``PgDumpNotFound`` saying what to install."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.backups.dump import PgDumpNotFound, find_client_bindir, tool_version, version_major


def fake_pg_dump(directory: Path, version: str) -> Path:
    """An executable ``pg_dump`` that only answers ``--version`` as a PostgreSQL ``version`` client would."""
    directory.mkdir(parents=True)
    tool = directory / "pg_dump"
    tool.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n")
    tool.chmod(0o755)
    return directory


def test_version_major_reads_the_tools_version_line() -> None:
    assert version_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == 15
    assert version_major("pg_dump (PostgreSQL) 9.6.24") == 9
    assert version_major("pg_dump 15") is None


def test_a_client_of_another_major_version_is_passed_over(tmp_path: Path) -> None:
    older = fake_pg_dump(tmp_path / "pg14", "14.11")
    assert find_client_bindir(14, extra=[older]) == older
    found = find_client_bindir(15, extra=[older])
    assert found != older and version_major(tool_version(found / "pg_dump")) == 15
    with pytest.raises(PgDumpNotFound) as missing:
        find_client_bindir(16, extra=[older])
    assert f"{older} (pg_dump 14)" in str(missing.value) and "postgresql-client-16" in str(missing.value)
