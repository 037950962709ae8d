"""Unpacking an uploaded ``uploads/`` folder (a tar, possibly compressed, or a zip) for an import.

Only regular files and directories are unpacked, each strictly inside the target directory: absolute
names, ``..``, links, devices and the like are refused (``InvalidArchive``), and so is an archive whose
members add up to more than ``MAX_UNPACKED_BYTES`` or ``MAX_MEMBERS`` (a zip bomb stops there, before
anything is written). Blocking: run it in a worker thread.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from controlplane.importer.errors import InvalidArchive

#: Largest total size of the files an archive may unpack to, and most members.
MAX_UNPACKED_BYTES = 64 * 2**30
MAX_MEMBERS = 1_000_000


def unpack(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` into ``target`` (created); the uploads folder in it: ``target``, or its one
    top-level directory when the archive holds nothing else (a tar of the folder itself)."""
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _unzip(archive, target)
    elif tarfile.is_tarfile(archive):
        _untar(archive, target)
    else:
        raise InvalidArchive("the uploads archive must be a tar (.tar, .tar.gz, .tgz, .tar.xz) or a zip")
    entries = list(target.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


def _safe_name(name: str) -> PurePosixPath | None:
    """The member's relative path, None for the archive's root itself; ``InvalidArchive`` if it leaves it."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or "\x00" in name or (path.parts and ":" in path.parts[0]):
        raise InvalidArchive(f"the uploads archive holds a path outside itself: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _check_totals(count: int, total: int) -> None:
    if count > MAX_MEMBERS or total > MAX_UNPACKED_BYTES:
        raise InvalidArchive(
            f"the uploads archive unpacks to {count} members and {total} bytes; at most {MAX_MEMBERS} and "
            f"{MAX_UNPACKED_BYTES} are accepted"
        )


def _unzip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            _check_totals(len(members), sum(m.file_size for m in members))
            for member in members:
                relative = _safe_name(member.filename)
                if relative is None:
                    continue
                destination = target / relative
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                if (member.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # a symlink or a device
                    raise InvalidArchive(f"the uploads archive holds a non-regular file: {member.filename!r}")
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise InvalidArchive(f"the uploads zip cannot be read: {exc}") from None


def _untar(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as bundle:
            members = bundle.getmembers()
            _check_totals(len(members), sum(m.size for m in members if m.isfile()))
            for member in members:
                if _safe_name(member.name) is None:
                    continue
                if not (member.isfile() or member.isdir()):
                    raise InvalidArchive(f"the uploads archive holds a link or a special file: {member.name!r}")
            bundle.extractall(target, filter="data")
    except tarfile.FilterError as exc:
        raise InvalidArchive(f"the uploads archive holds a path outside itself: {exc}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArchive(f"the uploads tar cannot be read: {exc}") from None
