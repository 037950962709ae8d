"""``controlplane.objectstore.sealed``: what the stores hold is AES-256-GCM frames under a per-object key.

Round trips at the sizes where framing can go wrong (empty, one byte, exactly one frame, one byte more, a few
MiB) whatever the input and output chunking; and every way a sealed stream can be damaged (cut short
anywhere, a flipped bit anywhere, another key, frames reordered, dropped or repeated, bytes appended) is
``SealBroken`` before any unauthenticated plaintext comes out. Data keys round-trip through the master key.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import AsyncIterator

import pytest

from controlplane.crypto import SecretBox
from controlplane.objectstore.sealed import (
    CHUNK_SIZE,
    HEADER_SIZE,
    MAGIC,
    SealBroken,
    new_data_key,
    seal,
    unseal,
    unwrap_key,
    wrap_key,
)

MASTER = "a master key for the sealed stream tests 0123456789"


async def pieces(data: bytes, size: int | None = None, *, seed: int = 0) -> AsyncIterator[bytes]:
    """``data`` in pieces of ``size`` bytes, or of random sizes (1 byte to 2 frames) when None."""
    rng = random.Random(seed)
    start = 0
    while start < len(data):
        step = size if size is not None else rng.randint(1, 2 * CHUNK_SIZE)
        yield data[start : start + step]
        start += step


async def sealed(data: bytes, key: bytes, size: int | None = 64 * 1024) -> bytes:
    return b"".join([c async for c in seal(pieces(data, size), key)])


async def opened(blob: bytes, key: bytes, size: int | None = None) -> bytes:
    return b"".join([c async for c in unseal(pieces(blob, size, seed=1), key)])


def frames(blob: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the raw frames (length, flag and ciphertext each) of a sealed blob."""
    header, rest, out = blob[:HEADER_SIZE], blob[HEADER_SIZE:], []
    while rest:
        length = struct.unpack(">I", rest[:4])[0]
        out.append(rest[: 5 + length])
        rest = rest[5 + length :]
    return header, out


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 12345])
@pytest.mark.parametrize("chunking", [7919, None])
async def test_round_trip(size: int, chunking: int | None) -> None:
    key = new_data_key()
    data = os.urandom(size)
    blob = await sealed(data, key, chunking)
    assert blob.startswith(MAGIC)
    assert await opened(blob, key, chunking) == data
    _, found = frames(blob)
    assert len(found) == max(1, -(-size // CHUNK_SIZE))  # full frames, and a final one (possibly empty)
    # Sealing the same data twice never gives the same bytes (a fresh nonce prefix each time).
    assert await sealed(data, key) != blob


async def test_the_plaintext_is_nowhere_in_the_sealed_bytes() -> None:
    secret = b"the notes of a rare card " * 1000
    assert secret[:40] not in await sealed(secret, new_data_key())


async def broken(blob: bytes, key: bytes) -> str:
    """The ``SealBroken`` message of opening ``blob`` (authenticated frames before the damage may come out)."""
    with pytest.raises(SealBroken) as caught:
        async for _ in unseal(pieces(blob, 4096), key):
            pass
    return str(caught.value)


@pytest.fixture(scope="module")
def three_frames() -> tuple[bytes, bytes, bytes]:
    """Key, plaintext and sealed blob of 2.5 frames (two full frames and a final one)."""
    import asyncio

    key = new_data_key()
    data = os.urandom(2 * CHUNK_SIZE + CHUNK_SIZE // 2)
    return key, data, asyncio.run(sealed(data, key))


@pytest.mark.parametrize("cut", [0, 3, HEADER_SIZE, HEADER_SIZE + 2, HEADER_SIZE + 100, -1, -17])
async def test_truncation_is_detected(three_frames: tuple[bytes, bytes, bytes], cut: int) -> None:
    key, _, blob = three_frames
    assert "truncated" in await broken(blob[:cut], key)


async def test_a_stream_cut_at_a_frame_boundary_is_detected(three_frames: tuple[bytes, bytes, bytes]) -> None:
    key, _, blob = three_frames
    header, found = frames(blob)
    assert "final frame is missing" in await broken(header + found[0] + found[1], key)
    assert "final frame is missing" in await broken(header, key)


@pytest.mark.parametrize("where", [0, 5, HEADER_SIZE - 1, HEADER_SIZE + 2, HEADER_SIZE + 4, HEADER_SIZE + 50, -1])
async def test_a_flipped_bit_anywhere_is_detected(three_frames: tuple[bytes, bytes, bytes], where: int) -> None:
    key, _, blob = three_frames
    damaged = bytearray(blob)
    damaged[where] ^= 0x01
    await broken(bytes(damaged), key)


async def test_another_key_opens_nothing(three_frames: tuple[bytes, bytes, bytes]) -> None:
    _, _, blob = three_frames
    assert "authentication" in await broken(blob, new_data_key())


async def test_reordered_dropped_or_repeated_frames_are_detected(three_frames: tuple[bytes, bytes, bytes]) -> None:
    key, _, blob = three_frames
    header, (first, second, last) = frames(blob)
    for frames_order in ([second, first, last], [first, last], [first, first, second, last], [first, second, second]):
        await broken(header + b"".join(frames_order), key)
    # A frame of another stream sealed with the same key does not fit either (its nonce prefix differs).
    other_header, other = frames(await sealed(os.urandom(CHUNK_SIZE + 1), key))
    await broken(header + other[0] + second + last, key)
    await broken(other_header + first + second + last, key)


async def test_appended_data_is_detected(three_frames: tuple[bytes, bytes, bytes]) -> None:
    key, _, blob = three_frames
    _, found = frames(blob)
    assert "after the final frame" in await broken(blob + b"x", key)
    assert "after the final frame" in await broken(blob + b"\x00" * 64, key)
    assert "after the final frame" in await broken(blob + found[-1], key)


async def test_a_foreign_file_is_not_a_sealed_stream() -> None:
    assert "bad header" in await broken(b"PGDMP" + os.urandom(100), new_data_key())


def test_data_keys_round_trip_through_the_master_key_only() -> None:
    key = new_data_key()
    assert len(key) == 32 and new_data_key() != key
    wrapped = wrap_key(SecretBox(MASTER), key)
    assert key.hex() not in wrapped
    assert unwrap_key(SecretBox(MASTER), wrapped) == key
    with pytest.raises(SealBroken):
        unwrap_key(SecretBox("another master key, not the one that wrapped it"), wrapped)
    with pytest.raises(SealBroken):
        unwrap_key(SecretBox(MASTER), wrapped[:-4] + "AAAA")
