"""The legacy import's value rules and file handling, without a database (fast).

Conditions and years are taken where unambiguous (a combined grade such as 'EX-MT' is rounded down to
the lower grade, and said so), roles never gain rights, dates are read in the formats real files have
(and refused where day and month cannot be told apart), password hashes are told apart, image paths
never leave the uploads folder, archives that would write outside their directory are refused, and
legacy bcrypt hashes verify (and always ask for an argon2id rehash) while sha256 ones never do.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.auth.passwords import Passwords
from controlplane.cards.images import ImageFormat
from controlplane.importer import normalize
from controlplane.importer.archive import unpack
from controlplane.importer.errors import InvalidArchive
from controlplane.importer.uploads import locate
from controlplane.settings import AuthSettings
from tests.legacy_support import PNG, bcrypt_hash, sha256_hash


@pytest.mark.parametrize(
    ("raw", "expected", "rounded"),
    [
        ("Mint", "mint", False), ("MT", "mint", False), ("Gem-MT", "mint", False), ("NM", "near_mint", False),
        ("near mint", "near_mint", False), ("Near-Mint", "near_mint", False), ("EX", "excellent", False),
        ("vg", "very_good", False), ("G", "good", False), ("fair", "fair", False), ("PR", "poor", False),
        ("EX-MT", "excellent", True), ("ex mt", "excellent", True), ("NM-MT", "near_mint", True),
        ("VG/EX", "very_good", True), (" poor ", "poor", False),
    ],
)  # fmt: skip
def test_conditions(raw: str, expected: str, rounded: bool) -> None:
    value, problem, was_rounded = normalize.condition(raw)
    assert (value, was_rounded) == (expected, rounded)
    assert (problem is not None) == rounded


@pytest.mark.parametrize("raw", ["damaged", "7", "mint-damaged", "NM+"])
def test_unknown_conditions_are_null_and_reported(raw: str) -> None:
    assert normalize.condition(raw)[0] is None and normalize.condition(raw)[1] is not None


def test_no_condition_is_no_problem() -> None:
    assert normalize.condition(None) == normalize.condition("  ") == (None, None, False)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1996, 1996), ("1996", 1996), (" 2001 ", 2001), (1996.0, 1996), ("1996.0", 1996), (None, None)],
)
def test_years(raw: object, expected: int | None) -> None:
    assert normalize.year(raw) == (expected, None)


@pytest.mark.parametrize("raw", ["1996a", "", "96", 96, 1700, 2101, 1996.5, "nineteen", True])
def test_bad_years_are_null_and_reported(raw: object) -> None:
    value, problem = normalize.year(raw)
    assert value is None and problem


def test_roles_never_gain_rights() -> None:
    assert [normalize.role(r)[0] for r in ("admin", "Editor", "user", None, "")] == [
        "tenant_admin", "collection_manager", "user", "user", "user",
    ]  # fmt: skip
    assert normalize.role("superuser") == ("user", "unknown role: imported as user")
    assert normalize.higher_role("user", "collection_manager") == "collection_manager"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2019-03-04 12:34:56", datetime(2019, 3, 4, 12, 34, 56, tzinfo=UTC)),
        ("2019-03-04T12:34:56+02:00", datetime(2019, 3, 4, 10, 34, 56, tzinfo=UTC)),
        ("2019-03-04T12:34:56Z", datetime(2019, 3, 4, 12, 34, 56, tzinfo=UTC)),
        (1551702896, datetime(2019, 3, 4, 12, 34, 56, tzinfo=UTC)),
        ("1551702896000", datetime(2019, 3, 4, 12, 34, 56, tzinfo=UTC)),
        ("13/03/2019", datetime(2019, 3, 13, tzinfo=UTC)),
        ("03/13/2019 08:30", datetime(2019, 3, 13, 8, 30, tzinfo=UTC)),
        ("04.03.2019", datetime(2019, 3, 4, tzinfo=UTC)),
        ("Mar 4, 2019", datetime(2019, 3, 4, tzinfo=UTC)),
        ("4 March 2019", datetime(2019, 3, 4, tzinfo=UTC)),
    ],
)
def test_dates(raw: object, expected: datetime) -> None:
    assert normalize.timestamp(raw) == (expected, None)


@pytest.mark.parametrize("raw", ["04/03/2019", "yesterday", "2019-02-30", "31/02/2019", -5])
def test_unreadable_dates_are_reported(raw: object) -> None:
    value, problem = normalize.timestamp(raw)
    assert value is None and problem


def test_password_kinds_and_text() -> None:
    assert normalize.password_kind(bcrypt_hash()) == "bcrypt"
    assert normalize.password_kind(sha256_hash()) == "sha256"
    assert normalize.password_kind("hunter2") == normalize.password_kind(None) == "unknown"
    assert normalize.text("a\x00b") == ("ab", True)
    assert normalize.ref_id("12") == 12 and normalize.ref_id("abc") is None and normalize.ref_id(3.0) == 3


def test_image_paths_stay_inside_the_uploads_folder(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(PNG + b"data")
    (tmp_path / "outside.png").write_bytes(PNG + b"data")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "big.png").write_bytes(PNG + b"x" * 100)
    root = root.resolve()
    for raw in ("sub/a.png", "/sub/a.png", "./sub/a.png", "uploads/sub/a.png", "sub\\a.png"):
        source, problem, _ = locate(root, raw, 1000)
        assert source is not None and source.format is ImageFormat.PNG and problem is None, raw
    for raw, missing in (("../outside.png", False), ("link.png", False), ("nope.png", True), ("big.png", False)):
        source, problem, was_missing = locate(root, raw, 50)
        assert source is None and problem and was_missing is missing, raw
    assert locate(None, "sub/a.png", 1000)[2] is True


def test_archives_that_leave_their_directory_are_refused(tmp_path: Path) -> None:
    for name in ("../evil.png", "/etc/evil.png", "a/../../evil.png"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            bundle.writestr(name, PNG)
        (tmp_path / "bad.zip").write_bytes(buffer.getvalue())
        with pytest.raises(InvalidArchive):
            unpack(tmp_path / "bad.zip", tmp_path / f"out-{len(name)}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        link = tarfile.TarInfo("uploads/escape.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bundle.addfile(link)
    (tmp_path / "bad.tar").write_bytes(buffer.getvalue())
    with pytest.raises(InvalidArchive):
        unpack(tmp_path / "bad.tar", tmp_path / "out-tar")
    (tmp_path / "plain.txt").write_bytes(b"neither tar nor zip")
    with pytest.raises(InvalidArchive):
        unpack(tmp_path / "plain.txt", tmp_path / "out-plain")
    assert not (tmp_path / "evil.png").exists()


async def test_legacy_bcrypt_hashes_verify_and_always_need_a_rehash() -> None:
    passwords = Passwords(AuthSettings(argon2_memory_kib=64, argon2_time_cost=1))
    legacy = bcrypt_hash("correct horse battery staple")
    assert await passwords.verify(legacy, "correct horse battery staple")
    assert not await passwords.verify(legacy, "correct horse battery stapl")
    assert passwords.needs_rehash(legacy) and not passwords.needs_rehash(await passwords.hash("x" * 12))
    assert not await passwords.verify("$2b$10$not-a-real-hash", "anything")
    # bcrypt only ever read a password's first 72 bytes (a legacy login with a longer one worked): so does this.
    assert await passwords.verify(bcrypt_hash("p" * 72), "p" * 72 + "a longer tail")
    assert not await passwords.verify(sha256_hash("secret"), "secret")  # sha256: never verifies
