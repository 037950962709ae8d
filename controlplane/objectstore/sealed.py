"""Envelope encryption of streams: what the object stores hold is sealed with a per-object data key.

Each backup or export gets a fresh 256-bit data key (``new_data_key``). The key itself is stored only
wrapped by the master key (``wrap_key``: the ``SecretBox`` of ``CARDVAULT_SECRET_KEY``, so ``cardvault keys
rotate`` re-wraps it), in the registry row of the object, never beside the object.

The sealed format is a header (``MAGIC`` and an 8-byte random nonce prefix) followed by frames: a 4-byte
big-endian length, a 1-byte final flag and the AES-256-GCM ciphertext of up to ``CHUNK_SIZE`` plaintext
bytes. Frame *n* uses the nonce ``prefix || n`` and authenticates the header, ``n`` and its final flag, so
reordered, dropped, repeated or altered frames fail to open, and a stream cut short is detected (no final
frame): ``unseal`` raises ``SealBroken`` and never yields plaintext it has not authenticated.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import AsyncIterable, AsyncIterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controlplane.crypto import SecretBox
from controlplane.errors import ConfigError

MAGIC = b"CVSEAL1\n"
NONCE_PREFIX_SIZE = 8
HEADER_SIZE = len(MAGIC) + NONCE_PREFIX_SIZE
#: Plaintext bytes per frame.
CHUNK_SIZE = 1024 * 1024
_TAG_SIZE = 16
_FRAME_HEAD = struct.Struct(">IB")
_MAX_FRAME = CHUNK_SIZE + _TAG_SIZE


class SealBroken(ValueError):
    """The sealed stream is corrupted, truncated, or sealed with another key."""


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_key(box: SecretBox, key: bytes) -> str:
    """``key`` encrypted under the master key, for the registry."""
    return box.encrypt(base64.b64encode(key).decode())


def unwrap_key(box: SecretBox, wrapped: str) -> bytes:
    try:
        return base64.b64decode(box.decrypt(wrapped), validate=True)
    except (ValueError, ConfigError) as exc:
        raise SealBroken(f"the data key cannot be unwrapped: {exc}") from None


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


async def seal(chunks: AsyncIterable[bytes], key: bytes) -> AsyncIterator[bytes]:
    """The sealed form of the plaintext stream ``chunks``."""
    aead = AESGCM(key)
    header = MAGIC + os.urandom(NONCE_PREFIX_SIZE)
    prefix = header[len(MAGIC) :]
    yield header
    pending = bytearray()
    index = 0

    def frame(data: bytes, final: bool) -> bytes:
        ciphertext = aead.encrypt(_nonce(prefix, index), data, _aad(header, index, final))
        return _FRAME_HEAD.pack(len(ciphertext), final) + ciphertext

    async for chunk in chunks:
        pending += chunk
        while len(pending) > CHUNK_SIZE:  # keep at least one byte back: the last frame must be final
            yield frame(bytes(pending[:CHUNK_SIZE]), False)
            del pending[:CHUNK_SIZE]
            index += 1
    yield frame(bytes(pending), True)


async def unseal(chunks: AsyncIterable[bytes], key: bytes) -> AsyncIterator[bytes]:
    """The plaintext of a sealed stream, frame by frame; ``SealBroken`` if anything is wrong with it."""
    aead = AESGCM(key)
    buffer = bytearray()
    header: bytes | None = None
    index = 0
    finished = False
    async for chunk in chunks:
        buffer += chunk
        if header is None:
            if len(buffer) < HEADER_SIZE:
                continue
            header = bytes(buffer[:HEADER_SIZE])
            if not header.startswith(MAGIC):
                raise SealBroken("not a sealed CardVault object (bad header)")
            del buffer[:HEADER_SIZE]
        while len(buffer) >= _FRAME_HEAD.size:
            if finished:
                raise SealBroken("data after the final frame")
            length, final = _FRAME_HEAD.unpack_from(buffer)
            if length < _TAG_SIZE or length > _MAX_FRAME or final > 1:
                raise SealBroken(f"frame {index} has an impossible length or flag")
            if len(buffer) < _FRAME_HEAD.size + length:
                break
            ciphertext = bytes(buffer[_FRAME_HEAD.size : _FRAME_HEAD.size + length])
            del buffer[: _FRAME_HEAD.size + length]
            try:
                plaintext = aead.decrypt(
                    _nonce(header[len(MAGIC) :], index), ciphertext, _aad(header, index, bool(final))
                )
            except InvalidTag:
                raise SealBroken(f"frame {index} fails authentication (corrupted, or another key)") from None
            index += 1
            finished = bool(final)
            if plaintext:
                yield plaintext
    if header is None:
        raise SealBroken("truncated: no header")
    if buffer:
        raise SealBroken("truncated: a partial frame at the end" if not finished else "data after the final frame")
    if not finished:
        raise SealBroken("truncated: the final frame is missing")
