"""A zip archive written as a stream: entries go in one after the other and the archive's bytes come out
as they are made, so an export never holds a whole table, or the whole archive, in memory or on disk.

``zipfile`` writes to a sink that cannot seek, so every entry carries a data descriptor (sizes and CRC
after its data) and ZIP64 fields (an entry may pass 4 GiB). Compression runs in a worker thread, a chunk
at a time, so the event loop never waits on it. Each entry's size and SHA-256 (of its content, before
compression) are recorded for the archive's manifest.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime

import msgspec

#: Content bytes handed to the compressor at once.
WRITE_CHUNK = 1024 * 1024


class ArchiveEntry(msgspec.Struct, frozen=True):
    """One file of an archive, as its manifest lists it."""

    name: str
    #: Size of the content (uncompressed).
    bytes: int
    sha256: str


class _Sink(io.RawIOBase):
    """Collects what ``zipfile`` writes until it is taken; it cannot seek (``tell`` raises)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.data += b
        return len(b)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class ZipStream:
    """Builds one archive: ``add`` entries in turn (yielding the archive's bytes), then ``finish``."""

    def __init__(self, created_at: datetime) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, mode="w", allowZip64=True)
        self._date_time = created_at.timetuple()[:6]
        self.entries: list[ArchiveEntry] = []

    async def add(self, name: str, content: AsyncIterable[bytes], *, compress: bool = True) -> AsyncIterator[bytes]:
        """Write the entry ``name`` from ``content``; yields archive bytes as they are produced."""
        info = zipfile.ZipInfo(name, date_time=self._date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        digest = hashlib.sha256()
        size = 0
        handle = self._zip.open(info, mode="w", force_zip64=True)
        try:
            pending = bytearray()
            async for chunk in content:
                pending += chunk
                if len(pending) >= WRITE_CHUNK:
                    block = bytes(pending)
                    pending.clear()
                    digest.update(block)
                    size += len(block)
                    await asyncio.to_thread(handle.write, block)
                    if self._sink.data:
                        yield self._sink.take()
            if pending:
                block = bytes(pending)
                digest.update(block)
                size += len(block)
                await asyncio.to_thread(handle.write, block)
        finally:
            handle.close()
        self.entries.append(ArchiveEntry(name=name, bytes=size, sha256=digest.hexdigest()))
        if self._sink.data:
            yield self._sink.take()

    def finish(self) -> bytes:
        """The archive's last bytes (the central directory)."""
        self._zip.close()
        return self._sink.take()


async def single(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk stream (for ``ZipStream.add``)."""
    yield data
